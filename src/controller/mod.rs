//! The plugin controller: drives each `Plugin` from package to a running endpoint.
//!
//! [`lifecycle`] is the pure core (observations in, decisions out); the Kubernetes edge
//! gathers observations and carries decisions out.

pub mod lifecycle;
