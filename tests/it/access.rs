//! access behaviour end to end.
