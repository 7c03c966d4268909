//! The container's filesystem, built inside its own mount namespace: overlay root, /proc, /dev,
//! /sys, bind mounts, pivot_root, then masked and read-only paths. Order and options follow runc's
//! `prepareRoot` / `pivotRoot` / `finalizeRootfs` (runtime-defaults.md §1–3).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::mount::{self, bind, ensure_mount_point, mount_fs, remount_read_only};
use crate::spec::{BindMount, IdMap, ProcessSpec, RootfsSpec};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Mount(#[from] mount::Error),
    #[error("image has no layers to mount")]
    NoLayers,
    #[error("create device {path}")]
    Device {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pivot_root into {root}")]
    PivotRoot {
        root: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("idmap {path} into the pod's user namespace")]
    Idmap {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stat bind source {path}")]
    BindSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Character devices every container gets (runc's `AllowedDevices`), all 0666 root:root.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
const DEV_SYMLINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
];

/// A `hostUsers: false` container's user namespace: its layers and bind mounts are idmapped
/// into it, and what the container owns belongs to its ids on the node.
#[derive(Clone, Copy)]
pub struct UserNamespace<'a> {
    pub fd: BorrowedFd<'a>,
    pub map: IdMap,
}

impl UserNamespace<'_> {
    /// The node's id of the namespace's `id`.
    fn host(&self, id: u32) -> u32 {
        self.map.to_host(id).unwrap_or(self.map.host_id)
    }
}

/// Builds the root and switches into it. Runs in the container's fresh mount (and PID) namespace.
pub fn prepare(
    rootfs: &RootfsSpec,
    mounts: &[BindMount],
    shm: Option<&Path>,
    userns: Option<UserNamespace<'_>>,
) -> Result<()> {
    // Nothing done below may leak back to the host: private, recursively (mount_namespaces(7)).
    mount::set_propagation(Path::new("/"), MsFlags::MS_PRIVATE)?;
    let root = rootfs.mount_point.as_path();
    mount_overlay(rootfs, userns)?;
    mount_proc(root)?;
    mount_dev(root, shm, userns)?;
    mount_sys(root)?;
    for m in mounts {
        bind_into(root, m, userns)?;
    }
    pivot_into(root)?;
    if rootfs.read_only {
        remount_read_only(Path::new("/"))?;
    }
    Ok(())
}

fn mount_overlay(rootfs: &RootfsSpec, userns: Option<UserNamespace<'_>>) -> Result<()> {
    if rootfs.layers.is_empty() {
        return Err(Error::NoLayers);
    }
    let mut layers = rootfs.layers.clone();
    if let Some(userns) = userns {
        // Each layer through an idmapped mount of its own (overlayfs takes idmapped layers, 5.19+),
        // attached beside the root in this mount namespace only; the upper directory belongs to
        // the namespace's root, whose files are made there as its ids on the node.
        let base = rootfs.mount_point.with_file_name("idmapped");
        for (i, layer) in rootfs.layers.iter().enumerate() {
            let target = base.join(i.to_string());
            ensure_mount_point(&target, true)?;
            let idmap = |source| Error::Idmap {
                path: layer.clone(),
                source,
            };
            let tree = sys::idmapped_tree(layer, userns.fd, true).map_err(idmap)?;
            sys::attach_tree(tree.as_fd(), &target).map_err(idmap)?;
            layers[i] = target;
        }
        for dir in [&rootfs.upper_dir, &rootfs.work_dir] {
            ensure_mount_point(dir, true)?;
        }
        let owner = Some(userns.map.host_id);
        nix::unistd::chown(
            &rootfs.upper_dir,
            owner.map(nix::unistd::Uid::from_raw),
            owner.map(nix::unistd::Gid::from_raw),
        )
        .map_err(|e| Error::Create {
            path: rootfs.upper_dir.clone(),
            source: e.into(),
        })?;
    }
    // overlayfs(5): the leftmost lowerdir is the top layer.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        rootfs.upper_dir.display(),
        rootfs.work_dir.display()
    );
    ensure_mount_point(&rootfs.mount_point, true)?;
    mount_fs(
        "overlay",
        &rootfs.mount_point,
        MsFlags::empty(),
        Some(&data),
    )?;
    Ok(())
}

fn mount_proc(root: &Path) -> Result<()> {
    let target = root.join("proc");
    ensure_mount_point(&target, true)?;
    mount_fs(
        "proc",
        &target,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        None,
    )?;
    Ok(())
}

fn mount_dev(root: &Path, shm: Option<&Path>, userns: Option<UserNamespace<'_>>) -> Result<()> {
    let dev = root.join("dev");
    ensure_mount_point(&dev, true)?;
    // In a user namespace, /dev and the terminals' group belong to its ids.
    let (root_id, tty_gid) = match userns {
        Some(u) => (u.host(0), u.host(5)),
        None => (0, 5),
    };
    mount_fs(
        "tmpfs",
        &dev,
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(&format!("mode=755,size=65536k,uid={root_id},gid={root_id}")),
    )?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|source| Error::Device {
            path: path.clone(),
            source,
        })?;
        // mknod(2) honours the umask; the mode must be exactly 0666.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|source| Error::Device {
            path: path.clone(),
            source,
        })?;
    }
    for (target, name) in DEV_SYMLINKS {
        let link = dev.join(name);
        symlink(target, &link).map_err(|source| Error::Create { path: link, source })?;
    }
    let pts = dev.join("pts");
    ensure_mount_point(&pts, true)?;
    mount_fs(
        "devpts",
        &pts,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}"
        )),
    )?;
    let shm_target = dev.join("shm");
    ensure_mount_point(&shm_target, true)?;
    match shm {
        Some(pod_shm) => bind(pod_shm, &shm_target, false)?,
        None => mount_fs(
            "tmpfs",
            &shm_target,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            Some("mode=1777,size=65536k"),
        )?,
    }
    let mqueue = dev.join("mqueue");
    ensure_mount_point(&mqueue, true)?;
    mount_fs(
        "mqueue",
        &mqueue,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        None,
    )?;
    Ok(())
}

fn mount_sys(root: &Path) -> Result<()> {
    let sys = root.join("sys");
    ensure_mount_point(&sys, true)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV | MsFlags::MS_RDONLY;
    mount_fs("sysfs", &sys, flags, None)?;
    Ok(())
}

fn bind_into(root: &Path, m: &BindMount, userns: Option<UserNamespace<'_>>) -> Result<()> {
    let source_meta = fs::metadata(&m.source).map_err(|source| Error::BindSource {
        path: m.source.clone(),
        source,
    })?;
    let target = mount::resolve_in_root(root, &m.destination)?;
    ensure_mount_point(&target, source_meta.is_dir())?;
    match userns {
        // Volumes and managed files are idmapped as containerd maps them for such a pod: an
        // owner on disk is that id in the container, and back.
        Some(userns) => {
            let idmap = |source| Error::Idmap {
                path: m.source.clone(),
                source,
            };
            let tree = sys::idmapped_tree(&m.source, userns.fd, m.read_only).map_err(idmap)?;
            sys::attach_tree(tree.as_fd(), &target).map_err(idmap)?;
        }
        None => bind(&m.source, &target, m.read_only)?,
    }
    Ok(())
}

/// pivot_root(".", ".") then detaching the old root, as runc does: no directory for the old root
/// is needed inside the container (pivot_root(2), "pivot_root(".", ".")").
fn pivot_into(root: &Path) -> Result<()> {
    let err = |source| Error::PivotRoot {
        root: root.to_owned(),
        source,
    };
    nix::unistd::chdir(root).map_err(err)?;
    nix::unistd::pivot_root(".", ".").map_err(err)?;
    mount::set_propagation(Path::new("."), MsFlags::MS_SLAVE)?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).map_err(err)?;
    nix::unistd::chdir("/").map_err(err)?;
    Ok(())
}

/// Binds the container's terminal over /dev/console, as runc does for a container with one.
pub fn mount_console(terminal: &Path) -> Result<()> {
    let console = Path::new("/dev/console");
    ensure_mount_point(console, false)?;
    bind(terminal, console, false)?;
    Ok(())
}

/// Hides and protects kernel files after pivot_root: masked files get /dev/null bound over them,
/// masked directories an empty read-only tmpfs; read-only paths are bound onto themselves and
/// remounted read-only. Paths the kernel does not have are skipped.
pub fn protect_paths(process: &ProcessSpec) -> Result<()> {
    for path in &process.masked_paths {
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => mount_fs(
                "tmpfs",
                path,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,nr_inodes=1"),
            )?,
            Ok(_) => bind(Path::new("/dev/null"), path, false)?,
            Err(_) => continue,
        }
    }
    for path in &process.readonly_paths {
        if path.exists() {
            bind(path, path, true)?;
        }
    }
    Ok(())
}
