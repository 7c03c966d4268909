//! Pod sandboxes and containers on Linux: the pod shim, the container init, and the kernel steps
//! they are made of (namespaces, mounts, rootfs, capabilities, cgroups), plus CRI log records.

pub mod caps;
pub mod cgroup;
pub mod devices;
pub mod exec;
pub mod init;
pub mod logs;
pub mod mount;
pub mod ns;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod spawn;
pub mod spec;
pub mod sys;
