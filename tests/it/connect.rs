//! connect behaviour end to end.
