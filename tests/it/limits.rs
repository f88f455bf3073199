//! limits behaviour end to end.
