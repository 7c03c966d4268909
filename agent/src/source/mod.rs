//! Where pods come from: the static manifest directory and an API server (a real one, or
//! nodelet's built-in API). Each source publishes the whole set of pods it wants on this node.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

pub mod api;
pub mod events;
mod file;
mod mirror;
mod node_status;

pub use file::FileSource;

/// The desired pods by UID; `None` until the source's first full read (nothing is deleted
/// before that).
pub type Desired = Option<BTreeMap<String, Arc<Pod>>>;
