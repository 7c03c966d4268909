//! Netlink for pod networking: links, veths, bridges, addresses, routes and namespace handles.
//!
//! A `Netlink` is bound to the network namespace it was opened in (a netlink socket acts on the
//! namespace it was created in, netlink(7)), so each namespace gets its own, opened on a
//! dedicated thread that entered it (`ns::open_in`). Lookups come in two kinds, as in Kata's
//! agent: `find_*` fails when the object is absent, `try_find_*` returns `None`, so "not found" is
//! never confused with a netlink failure.

pub use rtnetlink;

pub mod addr;
pub mod bridge;
pub mod link;
pub mod ns;
pub mod route;
pub mod sysctl;
pub mod veth;

use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open netlink socket in {namespace}")]
    Connect {
        namespace: String,
        #[source]
        source: std::io::Error,
    },
    #[error("enter network namespace {path}")]
    Enter {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {object}")]
    Netlink {
        action: &'static str,
        object: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {0} not found")]
    NoLink(String),
    #[error("{name} already exists but is not a {kind}")]
    WrongKind { name: String, kind: &'static str },
    #[error("{name} already has an IP address different from {address}")]
    AddressConflict { name: String, address: String },
    #[error("invalid route {route}: {reason}")]
    InvalidRoute { route: String, reason: String },
    #[error("write sysctl {path}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A netlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
    /// Where it acts, for error messages.
    pub namespace: String,
}

/// Whether a netlink error is this errno (`EEXIST`, `ENODEV`, ...).
pub(crate) fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}
