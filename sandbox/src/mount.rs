//! Small, named mount(2) steps, each with the path it acted on in its error.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mount {fstype} at {target}")]
    Mount {
        fstype: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("bind {source_path} at {target}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("remount {target} read-only")]
    Remount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("create mount point {path}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("resolve {path} inside {root}: too many symbolic links")]
    SymlinkLoop { root: PathBuf, path: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Mounts a filesystem of `fstype` (proc, tmpfs, overlay, ...) at `target`.
pub fn mount_fs(fstype: &str, target: &Path, flags: MsFlags, data: Option<&str>) -> Result<()> {
    mount(Some(fstype), target, Some(fstype), flags, data).map_err(|source| Error::Mount {
        fstype: fstype.to_owned(),
        target: target.to_owned(),
        source,
    })
}

/// Changes the propagation of every mount at and below `target` (MS_PRIVATE, MS_SLAVE, ...).
pub fn set_propagation(target: &Path, propagation: MsFlags) -> Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        propagation | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|source| Error::Mount {
        fstype: "propagation".into(),
        target: target.to_owned(),
        source,
    })
}

/// Recursively binds `source` at `target`, read-only when asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|e| Error::Bind {
        source_path: source.to_owned(),
        target: target.to_owned(),
        source: e,
    })?;
    if read_only {
        remount_read_only(target)?;
    }
    Ok(())
}

/// A bind mount ignores MS_RDONLY on creation; it takes a second, remount call (mount(2)).
/// The flags the mount already has (nosuid, nodev, noexec) must be kept or the kernel refuses
/// the remount in a locked mount namespace.
pub fn remount_read_only(target: &Path) -> Result<()> {
    let kept = nix::sys::statvfs::statvfs(target)
        .map(|s| {
            use nix::sys::statvfs::FsFlags;
            let f = s.flags();
            let mut m = MsFlags::empty();
            for (fs_flag, ms_flag) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            ] {
                if f.contains(fs_flag) {
                    m |= ms_flag;
                }
            }
            m
        })
        .unwrap_or(MsFlags::empty());
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept;
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|source| {
        Error::Remount {
            target: target.to_owned(),
            source,
        }
    })
}

/// Detaches the mount at `target`; absent mounts are not an error (teardown is idempotent).
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(Error::Unmount {
            target: target.to_owned(),
            source,
        }),
    }
}

/// Makes sure `path` exists as a directory or as an empty file, so something can be mounted on it.
pub fn ensure_mount_point(path: &Path, directory: bool) -> Result<()> {
    let err = |source| Error::MountPoint {
        path: path.to_owned(),
        source,
    };
    if directory {
        return fs::create_dir_all(path).map_err(err);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Resolves `path` as if `root` were `/`: symbolic links inside the container's filesystem are
/// followed, but `..` and absolute link targets never lead out of `root` (what runc's securejoin
/// guarantees). Components that do not exist yet are appended as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut hops = 0;
    while let Some(next) = pending.pop() {
        match next.components().next() {
            Some(Component::RootDir) | Some(Component::CurDir) | None => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&next);
        match fs::read_link(root.join(&candidate)) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return Err(Error::SymlinkLoop {
                        root: root.to_owned(),
                        path: path.to_owned(),
                    });
                }
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
            Err(_) => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_in_root_keeps_links_inside() {
        let dir = std::env::temp_dir().join(format!("nodelet-resolve-{}", std::process::id()));
        let root = dir.join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../outside", root.join("up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(&root, Path::new("/abs/hosts")).unwrap(),
            root.join("etc/hosts")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/up/x")).unwrap(),
            root.join("outside/x")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/../../etc")).unwrap(),
            root.join("etc")
        );
        assert!(matches!(
            resolve_in_root(&root, Path::new("/loop")),
            Err(Error::SymlinkLoop { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
