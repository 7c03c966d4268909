//! Pods: manifests, what to run for them, their workers, and their status.

pub mod action;
pub mod admission;
pub mod backoff;
pub mod build;
pub mod files;
pub mod lifecycle;
pub mod loglinks;
pub mod manifest;
pub mod objects;
pub mod probe;
pub mod projected;
pub mod quantity;
pub mod seccomp;
pub mod status;
pub mod subpath;
pub mod table;
pub mod userns;
pub mod volumes;
pub mod worker;
