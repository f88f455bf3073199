//! shutdown behaviour end to end.
