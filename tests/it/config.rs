//! config behaviour end to end.
