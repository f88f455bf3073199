//! forward behaviour end to end.
