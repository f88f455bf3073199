//! The fetch client end to end.
