//! Signal handling and the draining state.
