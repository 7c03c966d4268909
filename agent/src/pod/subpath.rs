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
    // kubelet: a variable that is not set, or empty, is an error (not left as `$(VAR)`).
    let mut missing: Vec<&str> = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("$(") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        let name = &after[..end];
        let escaped = start
            .checked_sub(1)
            .is_some_and(|i| rest.as_bytes()[i] == b'$');
        if !escaped && env.get(name).is_none_or(|v| v.is_empty()) && !missing.contains(&name) {
            missing.push(name);
        }
        rest = &after[end + 1..];
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(format!("missing value for {}", missing.join(", ")));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_path_expressions_need_every_variable() {
        let env = [
            ("POD".to_owned(), "web".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ]
        .into_iter()
        .collect();
        assert_eq!(expand("logs/$(POD)", &env).unwrap(), "logs/web");
        assert_eq!(
            expand("$(NOPE)/$(EMPTY)", &env).unwrap_err(),
            "missing value for EMPTY, NOPE"
        );
        assert_eq!(expand("$$(NOPE)", &env).unwrap(), "$(NOPE)");
        assert!(expand("../$(POD)", &env).is_err());
    }
}
