//! Where the world comes from: YAML files (standalone mode) or, later,
//! Kubernetes watches.

pub mod files;
