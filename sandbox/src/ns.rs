//! The pod's shared namespaces (network, UTS, IPC, and PID when shared): created by the shim,
//! pinned as bind-mounted nsfs files so they outlive any one process and can be entered by path.

use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};

use crate::mount;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create pod namespaces")]
    Unshare(#[source] nix::Error),
    #[error("set hostname {0:?}")]
    Hostname(String, #[source] nix::Error),
    #[error("bring up loopback")]
    Loopback(#[source] io::Error),
    #[error("set sysctl {0} to {1:?}")]
    Sysctl(String, String, #[source] io::Error),
    #[error("pin namespace at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: mount::Error,
    },
}

/// The namespaces every container of a pod shares, by their /proc/<pid>/ns names.
pub const POD_NAMESPACES: [&str; 3] = ["net", "uts", "ipc"];

/// Moves the calling (single-threaded) process into fresh network, UTS and IPC namespaces, names
/// the host, and brings `lo` up so the pod's containers reach each other on localhost. A
/// `hostNetwork` pod keeps the node's network and UTS namespaces (containerd's rule), a
/// `hostIPC` one the node's IPC namespace.
pub fn create_pod_namespaces(
    hostname: &str,
    host_network: bool,
    host_ipc: bool,
) -> Result<(), Error> {
    let mut flags = CloneFlags::empty();
    if !host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    if !host_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    unshare(flags).map_err(Error::Unshare)?;
    if !host_network {
        nix::unistd::sethostname(hostname).map_err(|e| Error::Hostname(hostname.to_owned(), e))?;
        crate::sys::loopback_up().map_err(Error::Loopback)?;
    }
    Ok(())
}

/// Sets sysctls in the calling process's (the pod's) network and IPC namespaces: their
/// /proc/sys files are the namespace's own for whoever opens them.
pub fn set_sysctls(sysctls: &[(String, String)]) -> Result<(), Error> {
    for (name, value) in sysctls {
        // Dotted names (a `/` stands for a dot inside a part, as in `eth0/100`); checked by the
        // agent, and still nothing but a plain path under /proc/sys is written.
        let parts: Vec<String> = name.split('.').map(|p| p.replace('/', ".")).collect();
        let plain = parts.iter().all(|p| !p.is_empty() && p != "." && p != "..");
        let path: PathBuf = parts
            .iter()
            .fold(PathBuf::from("/proc/sys"), |path, p| path.join(p));
        let written = if plain {
            std::fs::write(&path, value)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a sysctl name",
            ))
        };
        written.map_err(|e| Error::Sysctl(name.clone(), value.clone(), e))?;
    }
    Ok(())
}

/// Bind-mounts `/proc/<pid>/ns/<name>` onto `<dir>/<name>`; the namespace then lives as long as
/// the mount does (namespaces(7), "The /proc/[pid]/ns/ directory").
pub fn pin(dir: &Path, pid: &str, name: &str, file: &str) -> Result<PathBuf, Error> {
    let target = dir.join(name);
    let pin_err = |source| Error::Pin {
        path: target.clone(),
        source,
    };
    mount::ensure_mount_point(&target, false).map_err(pin_err)?;
    mount::bind(
        &Path::new("/proc").join(pid).join("ns").join(file),
        &target,
        false,
    )
    .map_err(pin_err)?;
    Ok(target)
}

/// Releases every pin in `dir`; idempotent, and every error is collected rather than stopping
/// at the first (teardown is best effort).
pub fn unpin_all(dir: &Path) -> Vec<mount::Error> {
    let mut errors = Vec::new();
    for name in POD_NAMESPACES.iter().chain(&["pid"]) {
        let path = dir.join(name);
        if let Err(e) = mount::unmount(&path) {
            errors.push(e);
        }
        let _ = std::fs::remove_file(&path);
    }
    errors
}
