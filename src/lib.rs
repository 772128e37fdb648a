//! The `plugsync` command: argument parsing and printing over the core
//! (`plugsync-core`) and the Kubernetes layer (`plugsync-kube`).
mod app;
pub mod cli;
