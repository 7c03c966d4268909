//! The pod's shared namespaces (network, UTS, IPC, and PID when shared): created by the shim,
//! pinned as bind-mounted nsfs files so they outlive any one process and can be entered by path.

use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};

use crate::mount;
use crate::spec::IdMap;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create pod namespaces")]
    Unshare(#[source] nix::Error),
    #[error("create the pod's user namespace: {0}")]
    UserNamespace(String),
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
        name_and_loopback(hostname)?;
    }
    Ok(())
}

/// Names the pod's host and brings its `lo` up, in the caller's UTS and network namespaces.
pub fn name_and_loopback(hostname: &str) -> Result<(), Error> {
    nix::unistd::sethostname(hostname).map_err(|e| Error::Hostname(hostname.to_owned(), e))?;
    crate::sys::loopback_up().map_err(Error::Loopback)
}

/// For `hostUsers: false`: a new user namespace mapping `map`, and fresh network, UTS and IPC
/// namespaces that belong to it (so the pod's root has its capabilities there: binding port 80,
/// raw sockets, sethostname), which the calling process joins. The caller itself stays in the
/// node's user namespace, with the node's privileges, to build containers; a short-lived child
/// makes the namespaces (only a process inside a user namespace makes namespaces it owns), and
/// the user namespace is returned open, for the caller to hold.
pub fn create_owned_pod_namespaces(map: &IdMap) -> Result<std::fs::File, Error> {
    use std::io::{Read, Write};
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Unshare);
    let (to_child_r, to_child_w) = pipe()?;
    let (to_parent_r, to_parent_w) = pipe()?;
    let flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    match crate::sys::fork().map_err(|e| Error::UserNamespace(e.to_string()))? {
        crate::sys::Forked::Child => {
            drop((to_child_w, to_parent_r));
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            let mut from = std::fs::File::from(to_child_r);
            let mut to = std::fs::File::from(to_parent_w);
            let mut byte = [0u8; 1];
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok()
                && to.write_all(b"u").is_ok()
                && from.read(&mut byte).is_ok_and(|n| n == 1)
                && unshare(flags).is_ok()
                && to.write_all(b"n").is_ok();
            // Held until the parent has joined and pinned (it closes its end).
            let _ = ok && from.read(&mut byte).is_ok();
            crate::sys::exit_now(if ok { 0 } else { 1 })
        }
        crate::sys::Forked::Parent(child) => {
            drop((to_child_r, to_parent_w));
            let mut from = std::fs::File::from(to_parent_r);
            let mut to = std::fs::File::from(to_child_w);
            let result = map_and_join(map, child, &mut from, &mut to);
            drop(to);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// The parent's half of `create_owned_pod_namespaces`: writes the child's id maps once it has
/// its user namespace, joins the namespaces it then makes, and returns the user namespace
/// (which the shim holds open for the pod's life).
fn map_and_join(
    map: &IdMap,
    child: nix::unistd::Pid,
    from: &mut std::fs::File,
    to: &mut std::fs::File,
) -> Result<std::fs::File, Error> {
    use std::io::{Read, Write};
    let step = |from: &mut std::fs::File, what: &str| {
        let mut byte = [0u8; 1];
        match from.read(&mut byte) {
            Ok(1) => Ok(()),
            _ => Err(Error::UserNamespace(format!("{what} failed"))),
        }
    };
    step(from, "unshare(CLONE_NEWUSER)")?;
    let line = format!("0 {} {}\n", map.host_id, map.size);
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{child}/{file}");
        std::fs::write(&path, &line)
            .map_err(|e| Error::UserNamespace(format!("write {path} ({line:?}): {e}")))?;
    }
    to.write_all(b"m")
        .map_err(|e| Error::UserNamespace(e.to_string()))?;
    step(
        from,
        "unshare of the pod's namespaces in its user namespace",
    )?;
    for (name, flag) in [
        ("net", CloneFlags::CLONE_NEWNET),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("ipc", CloneFlags::CLONE_NEWIPC),
    ] {
        let path = format!("/proc/{child}/ns/{name}");
        let ns = std::fs::File::open(&path)
            .map_err(|e| Error::UserNamespace(format!("open {path}: {e}")))?;
        nix::sched::setns(&ns, flag).map_err(Error::Unshare)?;
    }
    let path = format!("/proc/{child}/ns/user");
    std::fs::File::open(&path).map_err(|e| Error::UserNamespace(format!("open {path}: {e}")))
}

/// The user namespace of `pid` when it is not the caller's (a `hostUsers: false` container's),
/// to be joined last: after it, the node's privileges are gone.
pub fn foreign_user_namespace(pid: i32) -> io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
    let (a, b) = (theirs.metadata()?, std::fs::metadata("/proc/self/ns/user")?);
    Ok((a.ino() != b.ino() || a.dev() != b.dev()).then_some(theirs))
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
    for name in POD_NAMESPACES.iter().chain(&["pid", "user"]) {
        let path = dir.join(name);
        if let Err(e) = mount::unmount(&path) {
            errors.push(e);
        }
        let _ = std::fs::remove_file(&path);
    }
    errors
}
