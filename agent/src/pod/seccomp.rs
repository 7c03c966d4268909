//! A container's seccomp profile, chosen as kubelet chooses it and built as containerd builds it,
//! then compiled to BPF with libseccomp (runc's engine) for the shim to install.
//!
//! - Which: the container's `seccompProfile`, else the pod's, else `RuntimeDefault` when the node
//!   has `seccompDefault: true`, else none. Privileged containers get none (containerd).
//! - `RuntimeDefault` is containerd's `DefaultProfile`: an allow-list, everything else EPERM,
//!   with more calls allowed for the capabilities the container holds (`CAP_SYS_ADMIN` allows
//!   `mount`, `unshare`, `setns`, namespace flags to `clone`, ...).
//! - `Localhost` reads an OCI (Docker-format) profile from `<rootDir>/seccomp/<localhostProfile>`.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::Deserialize;

use super::build::{pod_spec, ConfigError};

/// The profile a container runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Unconfined,
    RuntimeDefault,
    Localhost(PathBuf),
}

/// kubelet's `getSeccompProfile`: container over pod over the node's `seccompDefault`.
pub fn choose(pod: &Pod, c: &Container, privileged: bool, default: bool, dir: &Path) -> Choice {
    if privileged {
        return Choice::Unconfined;
    }
    let own = c
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref());
    let pods = pod_spec(pod)
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref());
    match own.or(pods) {
        Some(SeccompProfile {
            type_,
            localhost_profile,
        }) => match type_.as_str() {
            "RuntimeDefault" => Choice::RuntimeDefault,
            "Localhost" => {
                Choice::Localhost(dir.join(localhost_profile.as_deref().unwrap_or_default()))
            }
            _ => Choice::Unconfined,
        },
        None if default => Choice::RuntimeDefault,
        None => Choice::Unconfined,
    }
}

/// The compiled filter (hex BPF, what `ProcessSpec::seccomp` carries) for a choice, with the
/// container's capabilities (which widen `RuntimeDefault`).
pub fn program(choice: &Choice, capabilities: &[String]) -> Result<Option<String>, ConfigError> {
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => {
            // Compiled once per capability set: most containers share one.
            static CACHE: OnceLock<Mutex<HashMap<Vec<String>, String>>> = OnceLock::new();
            let mut key = capabilities.to_vec();
            key.sort();
            let cache = CACHE.get_or_init(Default::default);
            if let Some(hex) = cache.lock().expect("seccomp cache").get(&key) {
                return Ok(Some(hex.clone()));
            }
            let hex = compile(&runtime_default(capabilities)).map_err(|e| {
                ConfigError(format!("compile the RuntimeDefault seccomp profile: {e}"))
            })?;
            cache
                .lock()
                .expect("seccomp cache")
                .insert(key, hex.clone());
            Ok(Some(hex))
        }
        Choice::Localhost(path) => {
            let failed = |why: String| {
                ConfigError(format!(
                    "cannot load seccomp profile {:?}: {why}",
                    path.display().to_string()
                ))
            };
            let text = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
            let profile: Profile =
                serde_json::from_slice(&text).map_err(|e| failed(e.to_string()))?;
            compile(&profile).map(Some).map_err(failed)
        }
    }
}

/// An OCI / Docker seccomp profile. Unknown fields are refused, not dropped: a profile nodelet
/// cannot apply as written (Docker's conditional `includes`/`excludes`, `flags`, a listener)
/// must not run as a looser one.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub comment: Option<String>,
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Docker's form of the architectures: `{"architecture": ..., "subArchitectures": [...]}`.
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub syscalls: Vec<Syscall>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Syscall {
    #[serde(default)]
    pub comment: Option<String>,
    /// Docker's conditions (capabilities, architectures, kernel): accepted only when empty.
    #[serde(default)]
    pub includes: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub excludes: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub names: Vec<String>,
    /// The old single-name form.
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        // runc: an errno action without a number is EPERM.
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        "SCMP_ACT_LOG" => ScmpAction::Log,
        other => return Err(format!("action {other:?} is not supported")),
    })
}

fn compare(arg: &Arg) -> Result<ScmpArgCompare, String> {
    let op = match arg.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(arg.value),
        other => return Err(format!("argument operator {other:?} is not known")),
    };
    let datum = if arg.op == "SCMP_CMP_MASKED_EQ" {
        arg.value_two
    } else {
        arg.value
    };
    Ok(ScmpArgCompare::new(arg.index, op, datum))
}

/// Compiles a profile as runc does (no_new_privs left to the container's setting, syscalls
/// this libseccomp does not know skipped) into hex BPF.
pub fn compile(profile: &Profile) -> Result<String, String> {
    let err = |e: libseccomp::error::SeccompError| e.to_string();
    let mut filter =
        ScmpFilterContext::new(action(&profile.default_action, profile.default_errno_ret)?)
            .map_err(err)?;
    filter.set_ctl_nnp(false).map_err(err)?;
    let mut arches: Vec<&str> = profile.architectures.iter().map(String::as_str).collect();
    for m in &profile.arch_map {
        arches.push(&m.architecture);
        arches.extend(m.sub_architectures.iter().map(String::as_str));
    }
    for arch in arches {
        let Ok(a) = arch.parse::<ScmpArch>() else {
            continue;
        };
        // The native one is there already; an arch this machine cannot run is skipped.
        let _ = filter.add_arch(a);
    }
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    // A call named twice without conditions (a capability's list repeating the base one) is
    // added once.
    let mut unconditional = std::collections::HashSet::new();
    for rule in &profile.syscalls {
        let conditional = [&rule.includes, &rule.excludes]
            .iter()
            .any(|c| c.as_ref().is_some_and(|m| !m.is_empty()));
        if conditional {
            return Err(format!(
                "the rule for {:?} has Docker's includes/excludes conditions, which nodelet does not evaluate",
                rule.names
            ));
        }
        let act = action(&rule.action, rule.errno_ret)?;
        if act == default {
            continue;
        }
        let args: Vec<ScmpArgCompare> = rule.args.iter().map(compare).collect::<Result<_, _>>()?;
        for name in rule.names.iter().chain(rule.name.iter()) {
            let Ok(call) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if args.is_empty() && !unconditional.insert(name.as_str()) {
                continue;
            }
            let added = if args.is_empty() {
                filter.add_rule(act, call)
            } else {
                filter.add_rule_conditional(act, call, &args)
            };
            added.map_err(|e| format!("rule for {name}: {e}"))?;
        }
    }
    let mut out = tempfile_memfd()?;
    filter.export_bpf(&mut out).map_err(err)?;
    let mut bytes = Vec::new();
    out.rewind().map_err(|e| e.to_string())?;
    out.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(hex::encode(bytes))
}

/// An anonymous in-memory file for libseccomp to write the program into.
fn tempfile_memfd() -> Result<std::fs::File, String> {
    let fd = nix::sys::memfd::memfd_create(c"seccomp-bpf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| e.to_string())?;
    Ok(std::fs::File::from(fd))
}

/// containerd's `DefaultProfile` for a container holding `capabilities` (its bounding set).
pub fn runtime_default(capabilities: &[String]) -> Profile {
    let allow = |names: &[&str]| Syscall {
        names: names.iter().map(|s| s.to_string()).collect(),
        action: "SCMP_ACT_ALLOW".into(),
        ..Default::default()
    };
    let mut syscalls = vec![allow(ALLOWED)];
    for value in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(Syscall {
            args: vec![Arg {
                index: 0,
                value,
                value_two: 0,
                op: "SCMP_CMP_EQ".into(),
            }],
            ..allow(&["personality"])
        });
    }
    // socket(2) for every family but AF_ALG (38) and AF_VSOCK (40).
    for (op, value) in [
        ("SCMP_CMP_LT", 38),
        ("SCMP_CMP_EQ", 39),
        ("SCMP_CMP_GT", 40),
    ] {
        syscalls.push(Syscall {
            args: vec![Arg {
                index: 0,
                value,
                value_two: 0,
                op: op.into(),
            }],
            ..allow(&["socket"])
        });
    }
    if cfg!(target_arch = "x86_64") {
        syscalls.push(allow(&["arch_prctl", "modify_ldt"]));
    } else if cfg!(target_arch = "aarch64") {
        syscalls.push(allow(&[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]));
    }
    let has = |cap: &str| capabilities.iter().any(|c| c == cap);
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(allow(names));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without namespace flags; clone3 says ENOSYS so that libc falls back to clone.
        const NEW_NAMESPACES: u64 = (libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP) as u64;
        syscalls.push(Syscall {
            args: vec![Arg {
                index: 0,
                value: NEW_NAMESPACES,
                value_two: 0,
                op: "SCMP_CMP_MASKED_EQ".into(),
            }],
            ..allow(&["clone"])
        });
        syscalls.push(Syscall {
            names: vec!["clone3".into()],
            action: "SCMP_ACT_ERRNO".into(),
            errno_ret: Some(libc::ENOSYS as u32),
            ..Default::default()
        });
    }
    let architectures = if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]
    } else {
        vec![]
    };
    Profile {
        default_action: "SCMP_ACT_ERRNO".into(),
        architectures: architectures.into_iter().map(str::to_owned).collect(),
        syscalls,
        ..Default::default()
    }
}

/// Calls a capability brings (containerd's per-capability additions).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The calls every container may make (containerd's and moby's allow-list; `ptrace` and
/// `process_vm_*` are there as the kernel is newer than 4.8).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area",
    "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "getxattrat", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
    "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listmount", "listxattr", "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek",
    "lsetxattr", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "lstat", "lstat64",
    "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "process_vm_readv", "process_vm_writev", "pselect6",
    "pselect6_time64", "ptrace", "pwrite64", "pwritev", "pwritev2", "read", "readahead",
    "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64",
    "recvmsg", "remap_file_pages", "removexattr", "removexattrat", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget", "shutdown",
    "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair",
    "splice", "stat", "stat64", "statfs", "statfs64", "statmount", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat", "utimensat_time64", "utimes",
    "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_default_compiles_and_widens_with_sys_admin() {
        let plain = compile(&runtime_default(&["CAP_CHOWN".into()])).unwrap();
        let admin = compile(&runtime_default(&["CAP_SYS_ADMIN".into()])).unwrap();
        assert!(!plain.is_empty() && plain.len().is_multiple_of(16));
        assert_ne!(plain, admin);
        nodelet_sandbox::seccomp::Filter::from_hex(&plain).unwrap();
    }

    #[test]
    fn the_profile_is_chosen_as_kubelet_chooses_it() {
        let pod = |yaml: &str| crate::pod::manifest::parse(yaml.as_bytes()).unwrap();
        let dir = Path::new("/root/seccomp");
        let plain = pod("metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}");
        let c = &pod_spec(&plain).containers[0];
        assert_eq!(choose(&plain, c, false, false, dir), Choice::Unconfined);
        assert_eq!(
            choose(&plain, c, false, true, dir),
            Choice::RuntimeDefault,
            "seccompDefault"
        );
        assert_eq!(
            choose(&plain, c, true, true, dir),
            Choice::Unconfined,
            "privileged"
        );
        let both = pod("metadata: {name: p}\nspec: {securityContext: {seccompProfile: {type: RuntimeDefault}}, containers: [{name: c, image: i, securityContext: {seccompProfile: {type: Localhost, localhostProfile: a.json}}}]}");
        let c = &pod_spec(&both).containers[0];
        assert_eq!(
            choose(&both, c, false, false, dir),
            Choice::Localhost(dir.join("a.json")),
            "container over pod"
        );
    }

    #[test]
    fn localhost_profiles_in_docker_form() {
        let profile: Profile = serde_json::from_str(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
                "syscalls": [{"names": ["mkdir", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                             {"names": ["chmod"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap();
        let err = compile(&profile).unwrap_err();
        assert!(err.contains("SCMP_ACT_NOTIFY"), "{err}");
    }
}
