//! CNI network configuration: the wire format of `.conflist`/`.conf` files, the validated
//! configuration nodelet acts on, the default network it writes when there is none, and an
//! allocator that shares host-local's on-disk store byte for byte.
#![forbid(unsafe_code)]

pub mod config;
pub mod hostlocal;
pub mod wire;

pub use config::{Bridge, Error, HostLocal, IpRange, NetworkList, Plugin, RangeSet, Route};
