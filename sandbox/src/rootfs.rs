//! The container's filesystem, built inside its own mount namespace: overlay root, /proc, /dev,
//! /sys, bind mounts, pivot_root, then masked and read-only paths. Order and options follow runc's
//! `prepareRoot` / `pivotRoot` / `finalizeRootfs` (runtime-defaults.md §1–3).

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::mount::{self, bind, ensure_mount_point, mount_fs, remount_read_only};
use crate::spec::{BindMount, ProcessSpec, RootfsSpec};

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

/// Builds the root and switches into it. Runs in the container's fresh mount (and PID) namespace.
pub fn prepare(rootfs: &RootfsSpec, mounts: &[BindMount], shm: Option<&Path>) -> Result<()> {
    // Nothing done below may leak back to the host: private, recursively (mount_namespaces(7)).
    mount::set_propagation(Path::new("/"), MsFlags::MS_PRIVATE)?;
    let root = rootfs.mount_point.as_path();
    mount_overlay(rootfs)?;
    mount_proc(root)?;
    mount_dev(root, shm)?;
    mount_sys(root)?;
    for m in mounts {
        bind_into(root, m)?;
    }
    pivot_into(root)?;
    if rootfs.read_only {
        remount_read_only(Path::new("/"))?;
    }
    Ok(())
}

fn mount_overlay(rootfs: &RootfsSpec) -> Result<()> {
    if rootfs.layers.is_empty() {
        return Err(Error::NoLayers);
    }
    // overlayfs(5): the leftmost lowerdir is the top layer.
    let lower: Vec<String> = rootfs
        .layers
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

fn mount_dev(root: &Path, shm: Option<&Path>) -> Result<()> {
    let dev = root.join("dev");
    ensure_mount_point(&dev, true)?;
    mount_fs(
        "tmpfs",
        &dev,
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
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
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
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

fn bind_into(root: &Path, m: &BindMount) -> Result<()> {
    let source_meta = fs::metadata(&m.source).map_err(|source| Error::BindSource {
        path: m.source.clone(),
        source,
    })?;
    let target = mount::resolve_in_root(root, &m.destination)?;
    ensure_mount_point(&target, source_meta.is_dir())?;
    bind(&m.source, &target, m.read_only)?;
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
