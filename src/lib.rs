//! plugsync: a declarative GitOps reconciler for Dify plugins on Kubernetes.
pub mod error;
pub mod package;
pub mod redact;
pub mod resolve;

pub use error::{Diagnostic, Diagnostics, Error, Result};
