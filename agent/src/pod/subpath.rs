//! `subPath` and `subPathExpr` mounts, safely (kubelet's `pkg/volume/util/subpath`): the path is
//! resolved beneath the volume by the kernel (`openat2` with `RESOLVE_BENEATH`), so that no
//! symlink a container planted in a shared volume can lead the mount out of it, and the result
//! is bound from the open file descriptor to an agent-owned place
//! (`<pod>/volume-subpaths/<volume>/<container>/<index>`). The container's mount is made from
//! that place, which the pod cannot change between the check and the mount.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

/// Binds `volume/sub` at `target` (creating missing directories on the way, with the volume's
/// mode, as kubelet's `SafeMakeDir` does) and returns `target`. A target already bound to the
/// same file is kept; one bound to an older file (a ConfigMap key that changed) is bound anew.
pub fn bind(volume: &Path, sub: &str, target: &Path) -> Result<PathBuf, String> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "subPath {sub:?} of volume {}: {what}: {e}",
            volume.display()
        )
    };
    let fd = open_beneath(volume, sub).map_err(|e| match e {
        nix::Error::EXDEV | nix::Error::ELOOP => {
            format!(
                "subPath {sub:?} is not within volume path {}",
                volume.display()
            )
        }
        e => failed("open", &e),
    })?;
    let stat = fstat(&fd).map_err(|e| failed("stat", &e))?;
    let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if super::volumes::is_mount_point(target) {
        match std::fs::metadata(target) {
            Ok(m) if m.dev() == stat.st_dev && m.ino() == stat.st_ino => {
                return Ok(target.to_owned())
            }
            _ => nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| failed("unmount the old binding", &e))?,
        }
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed("create", &e))?;
    }
    let made = if is_dir {
        std::fs::create_dir_all(target)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map(drop)
    };
    made.map_err(|e| failed("create the mount point", &e))?;
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::mount::mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| failed("bind", &e))?;
    Ok(target.to_owned())
}

/// Opens `sub` beneath `volume` as an `O_PATH` descriptor, creating missing directories.
fn open_beneath(volume: &Path, sub: &str) -> nix::Result<OwnedFd> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let root = nix::fcntl::open(
        volume,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    match openat2(&root, sub, how()) {
        Err(nix::Error::ENOENT) => {}
        other => return other,
    }
    // Make what is missing one component at a time, each step again beneath the volume.
    let mode = Mode::from_bits_truncate(fstat(&root)?.st_mode & 0o7777);
    let mut dir = root;
    for part in sub.split('/').filter(|p| !p.is_empty() && *p != ".") {
        match nix::sys::stat::mkdirat(&dir, part, mode) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(e),
        }
        dir = openat2(&dir, part, how())?;
    }
    Ok(dir)
}

/// kubelet's expansion of `subPathExpr` with the container's environment (`$(VAR)`), and the
/// check that the result stays inside the volume.
pub fn expand(
    expr: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    let path = super::build::expand(expr, env);
    if path.starts_with('/') {
        return Err(format!(
            "subPathExpr {expr:?} expands to an absolute path {path:?}"
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!(
            "subPathExpr {expr:?} expands to {path:?}, which contains '..'"
        ));
    }
    Ok(path)
}

/// Unmounts every subPath binding of a pod (its teardown).
pub fn unmount_all(pod_root: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let base = pod_root.join("volume-subpaths");
    for volume in read_dirs(&base) {
        for container in read_dirs(&volume) {
            for target in read_entries(&container) {
                if super::volumes::is_mount_point(&target) {
                    if let Err(e) = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
                        errors.push(format!("unmount {}: {e}", target.display()));
                    }
                }
            }
        }
    }
    errors
}

fn read_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    read_entries(dir)
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
        .collect()
}
