//! Volumes the agent itself provides on the host: `emptyDir` directories, in memory (tmpfs)
//! when `medium: Memory` asks for it, with `sizeLimit` as the tmpfs size (kubelet's
//! `emptyDir` plugin; the size otherwise defaults to the node's memory, as the kernel's does to
//! half of it).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::Volume;

use super::quantity;

/// Creates the volume's directory (mode 0777, as kubelet makes it) and, for `medium: Memory`,
/// mounts a tmpfs on it unless one is there already (a restarted agent or a new sandbox keeps
/// the volume's content, as kubelet does).
pub fn prepare_empty_dir(dir: &Path, volume: &Volume) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let spec = volume.empty_dir.as_ref();
    if spec.and_then(|e| e.medium.as_deref()) == Some("Memory") && !is_mount_point(dir) {
        let mut options = String::from("mode=0777");
        if let Some(size) = spec
            .and_then(|e| e.size_limit.as_ref())
            .and_then(|q| quantity::parse_bytes(&q.0))
        {
            options.push_str(&format!(",size={size}"));
        }
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(std::io::Error::from)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

/// Mounts the node's tmpfs for API volumes at `dir` (mode 0700: only root looks in; pods see
/// their own volumes through bind mounts) unless it is there already, from an agent before.
pub fn mount_api_volumes(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if !is_mount_point(dir) {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("mode=0700"),
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Whether `path` is the root of a mount (statx's `STATX_ATTR_MOUNT_ROOT`: right for bind
/// mounts from the same file system too, where comparing devices says nothing).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statx writes at most a `statx` struct into `buf`; the path is NUL-terminated.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut buf,
        )
    };
    rc == 0
        && buf.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
        && buf.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
}
