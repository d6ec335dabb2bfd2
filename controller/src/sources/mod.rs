//! Where the world comes from: YAML files (standalone mode) or Kubernetes
//! watches.

pub mod files;
pub mod kube;
