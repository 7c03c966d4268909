//! CNI network configuration lists: parsing, validation, and host-local compatible allocation.
//!
//! Grown by the pod network issue.
#![forbid(unsafe_code)]
