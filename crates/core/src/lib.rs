//! plugsync's core: everything that decides, nothing that talks to Kubernetes.
//!
//! The pipeline runs one way, each stage a module with plain data in and out:
//! `load` (parse and validate plugins.yaml) → `resolve` (exact packages, verified against
//! plugins.lock) → `render` (Dockerfiles and objects from templates) → `plan` (what to change)
//! → `report` (the diff a person reads). `pipeline` strings them together for the commands;
//! `diff` plans two revisions' pipelines against each other for `report` to present.
//! Reading a repository (`source`), downloading packages (`fetch`) and the package cache are
//! the only I/O; the Kubernetes
//! client lives in `plugsync-kube`, so every decision here is tested with plain synchronous
//! tests. `docs/architecture.md` draws the layers.
pub mod codegen;
pub mod crd;
pub mod diff;
pub mod error;
pub mod expand;
pub mod fetch;
pub mod inventory;
pub mod load;
pub mod model;
pub mod package;
pub mod pipeline;
pub mod plan;
pub mod redact;
pub mod render;
pub mod report;
pub mod resolve;
pub mod source;
mod yaml;

// The synthetic repository generator lives in the dev-only `plugsync-testkit` crate; the core's
// own unit tests compile the same file in, since a dev-dependency on testkit would link a second
// copy of this crate whose types do not match. `plugsync_core::` paths in it resolve to this crate.
#[cfg(test)]
extern crate self as plugsync_core;
#[cfg(test)]
#[path = "../../testkit/src/synth.rs"]
#[allow(dead_code)]
pub(crate) mod synth;

pub use error::{Diagnostic, Diagnostics, Error, Result};
