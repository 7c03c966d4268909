//! Netlink for pod networking: links, veths, bridges, addresses, routes and namespace handles.
//!
//! Grown by the pod network issue; the pod's network namespace itself is created and pinned by the
//! shim (`nodelet_sandbox::ns`) at `<run dir>/pods/<uid>/ns/net`, which is where this crate will
//! act on it.
