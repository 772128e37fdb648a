//! Test support that ships with plugsync: a Kubernetes API server double that speaks the real
//! REST protocol over loopback HTTP, so the kube client, `kubectl` and plugsync itself can be
//! tested where no real kube-apiserver can run. Not used by plugsync at run time.

pub mod apiserver;
pub mod ssa;
