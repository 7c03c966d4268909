//! /proc/sys/net writes. /proc/sys/net shows the network namespace of the task that opens it, so
//! a pod's sysctls are written from a thread inside the pod's namespace (`ns::run_in`).

use std::path::Path;

use crate::{Error, Result};

/// Writes `value` to `/proc/sys/<key>` (key as a path: `net/ipv4/ip_forward`), skipping the
/// write when it already reads so. A key the kernel lacks (IPv6 disabled) is not an error.
pub fn set(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    match std::fs::read_to_string(&path) {
        Ok(current) if current.trim() == value => Ok(()),
        Ok(_) => std::fs::write(&path, value).map_err(|source| Error::Sysctl {
            path: path.display().to_string(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Sysctl {
            path: path.display().to_string(),
            source,
        }),
    }
}
