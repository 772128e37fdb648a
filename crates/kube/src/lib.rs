//! plugsync's Kubernetes layer: where the core's decisions meet a cluster.
//!
//! `apply` (server-side apply with ownership and prune), `controller` (builds and runs each
//! Plugin), `gitops` (the loop following a branch), `leader` (Lease election), `server`
//! (health, metrics, build contexts), `cluster` (the client), `registry` (image checks).
//! Decisions come from `plugsync-core`; this crate adds the I/O.
pub mod apply;
pub mod cluster;
pub mod connector;
pub mod controller;
pub mod error;
pub mod gitops;
pub mod leader;
pub mod metrics;
pub mod registry;
pub mod server;
mod token;
