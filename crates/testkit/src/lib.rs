//! Dev-only test support for plugsync: the synthetic repository generator behind the
//! benchmark and the scale tests. Never a dependency of the product.
pub mod synth;
