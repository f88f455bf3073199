//! The shared ureq Agent.
