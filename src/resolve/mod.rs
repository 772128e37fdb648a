//! Resolve: turn each declared plugin into an exact package, verified against the lock.
pub mod cache;
pub mod source;
