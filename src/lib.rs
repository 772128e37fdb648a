//! plugsync: a declarative GitOps reconciler for Dify plugins on Kubernetes.
//!
//! The pipeline runs one way, each stage a module with plain data in and out:
//! `load` (parse and validate) → `resolve` (exact packages, verified against the lock) → …
pub mod apply;
pub mod cli;
pub mod cluster;
pub mod codegen;
pub mod controller;
pub mod crd;
pub mod error;
pub mod gitops;
pub mod leader;
pub mod load;
pub mod metrics;
pub mod model;
pub mod package;
pub mod parallel;
pub mod pipeline;
pub mod plan;
pub mod redact;
pub mod registry;
pub mod render;
pub mod report;
pub mod resolve;
pub mod server;
pub mod source;
pub mod synth;
mod yaml;

pub use error::{Diagnostic, Diagnostics, Error, Result};
