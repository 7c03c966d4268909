//! Starting a command in a running container from the shim, as posix_spawn does: everything the
//! child needs (namespace and cgroup descriptors, argv and envp, the program's candidate paths,
//! the working directory, the user, the capability masks) is prepared by the parent, and the
//! child, made with `CLONE_VM | CLONE_VFORK`, only makes system calls until it execs. No page
//! tables are copied and no page is faulted in twice, which on a virtual machine is most of what
//! an exec probe costs.
//!
//! The child shares the parent's memory, so it must not allocate, take locks or unwind: it uses
//! raw system calls (not glibc's `setuid`, which signals the parent's threads) and reports a
//! failure as a prepared message plus the errno, written to a pipe.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::exec::Error;
use crate::spec::ExecSpec;

/// The namespaces the child joins (the PID namespace is the parent's to set, for its children).
const NAMESPACES: [(&str, CloneFlags); 4] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// A running container's namespaces and cgroups, opened once and kept by the shim while the
/// container runs (they do not change), so that each exec only uses them.
pub struct Joined {
    pid_ns: File,
    cgroups: Vec<File>,
    namespaces: Vec<(File, libc::c_int)>,
}

impl Joined {
    /// Opens the namespaces and `cgroup.procs` files of the container whose first process is
    /// `pid`.
    pub fn open(pid: i32) -> Result<Joined, Error> {
        let not_running = |_| Error::NotRunning(pid);
        let mut namespaces: Vec<(File, libc::c_int)> = NAMESPACES
            .iter()
            .map(|(name, flag)| {
                File::open(format!("/proc/{pid}/ns/{name}"))
                    .map(|f| (f, flag.bits()))
                    .map_err(not_running)
            })
            .collect::<Result<_, _>>()?;
        // A `hostUsers: false` container's user namespace goes last, after the mount namespace
        // (which the node's privileges join).
        if let Some(user) = crate::ns::foreign_user_namespace(pid).map_err(not_running)? {
            namespaces.push((user, CloneFlags::CLONE_NEWUSER.bits()));
        }
        let cgroups = crate::exec::cgroup_procs(pid)?
            .into_iter()
            .map(|path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| Error::Cgroup { path, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Joined {
            pid_ns: File::open(format!("/proc/{pid}/ns/pid")).map_err(not_running)?,
            cgroups,
            namespaces,
        })
    }
}

/// What the child needs, prepared by the parent.
struct Prepared<'j> {
    null: File,
    joined: &'j Joined,
    drop_bounding: Vec<libc::c_ulong>,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    caps: [u32; 2],
    no_new_privs: bool,
    seccomp: Option<crate::seccomp::Filter>,
    cwd: CString,
    /// Where the program may be: itself if it names a path, else each `$PATH` entry's.
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    not_found: Vec<u8>,
}

fn cstring(s: impl AsRef<[u8]>) -> Result<CString, Error> {
    CString::new(s.as_ref()).map_err(|_| Error::Process(crate::init::Error::Nul))
}

fn prepare<'j>(spec: &ExecSpec, joined: &'j Joined) -> Result<Prepared<'j>, Error> {
    let process = &spec.process;
    let wanted = crate::caps::parse(&process.capabilities)
        .map_err(|e| Error::Process(crate::init::Error::Caps(e)))?;
    let mut mask = 0u64;
    for cap in &wanted {
        mask |= 1 << cap.index();
    }
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(40);
    let drop_bounding = (0..=last)
        .filter(|c| mask & (1 << c) == 0)
        .map(|c| c as libc::c_ulong)
        .collect();
    let name = process.args.first().map(String::as_str).unwrap_or_default();
    let candidates = if name.contains('/') {
        vec![cstring(name)?]
    } else {
        let path = process
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|dir| cstring(Path::new(dir).join(name).as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?
    };
    Ok(Prepared {
        null: File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(Error::Fork)?,
        joined,
        drop_bounding,
        groups: process.additional_gids.clone(),
        uid: process.uid,
        gid: process.gid,
        caps: [mask as u32, (mask >> 32) as u32],
        no_new_privs: process.no_new_privileges,
        seccomp: process
            .seccomp
            .as_deref()
            .map(crate::seccomp::Filter::from_hex)
            .transpose()
            .map_err(|e| {
                Error::Process(crate::init::Error::Caps(crate::caps::Error::Seccomp(e)))
            })?,
        cwd: cstring(process.cwd.as_os_str().as_bytes())?,
        candidates,
        argv: process.args.iter().map(cstring).collect::<Result<_, _>>()?,
        envp: process.env.iter().map(cstring).collect::<Result<_, _>>()?,
        not_found: format!("exec: {name:?}: executable file not found in $PATH").into_bytes(),
    })
}

/// Starts the command in the container `joined` opened; returns its pid (in the caller's PID
/// namespace). The caller must be single-threaded: it enters the container's PID namespace for
/// its children and leaves it again. The command's stdout and stderr are `output`; a failure to
/// start is written to `errors` (close-on-exec: empty once the command runs).
pub fn spawn(
    spec: &ExecSpec,
    joined: &Joined,
    output: BorrowedFd<'_>,
    errors: OwnedFd,
) -> Result<Pid, Error> {
    if spec.process.args.is_empty() {
        return Err(Error::Process(crate::init::Error::Nul));
    }
    let prepared = prepare(spec, joined)?;
    let own = File::open("/proc/self/ns/pid").map_err(Error::Fork)?;
    nix::sched::setns(&joined.pid_ns, CloneFlags::CLONE_NEWPID).map_err(|source| Error::Join {
        path: PathBuf::from(format!("/proc/{}/ns/pid", spec.pid)),
        source,
    })?;
    let argv: Vec<*const libc::c_char> = prepared
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = prepared
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let (output, errors_fd) = (output.as_raw_fd(), errors.as_raw_fd());
    let mut stack = vec![0u8; 64 * 1024];
    let child = Box::new(|| -> isize {
        // SAFETY: the child runs on its own stack in the parent's memory while the parent is
        // suspended (CLONE_VFORK); it only reads what was prepared and makes system calls.
        unsafe { child(&prepared, &argv, &envp, output, errors_fd) }
    });
    // SAFETY: CLONE_VM | CLONE_VFORK: the parent waits until the child execs or exits, and the
    // child allocates nothing (see `child`).
    let pid = unsafe {
        nix::sched::clone(
            child,
            &mut stack,
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| Error::Fork(e.into()));
    // Back to the caller's own namespace for its next children (always allowed: it is the
    // caller's active one).
    let _ = nix::sched::setns(&own, CloneFlags::CLONE_NEWPID);
    drop(errors);
    pid
}

/// Writes `what`, ": errno N" and exits: the child's only way to fail.
unsafe fn fail(errors: RawFd, what: &[u8]) -> ! {
    let errno = *libc::__errno_location();
    let mut buf = [0u8; 16];
    let mut n = errno.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    libc::write(errors, what.as_ptr().cast(), what.len());
    let sep = b": errno ";
    libc::write(errors, sep.as_ptr().cast(), sep.len());
    libc::write(errors, buf[i..].as_ptr().cast(), buf.len() - i);
    libc::_exit(127)
}

unsafe fn child(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    output: RawFd,
    errors: RawFd,
) -> isize {
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    let null = p.null.as_raw_fd();
    if libc::dup2(null, 0) < 0 || libc::dup2(output, 1) < 0 || libc::dup2(output, 2) < 0 {
        fail(errors, b"set up the command's stdio");
    }
    for cgroup in &p.joined.cgroups {
        if libc::write(cgroup.as_raw_fd(), b"0".as_ptr().cast(), 1) < 0 {
            fail(errors, b"join the container's cgroup");
        }
    }
    for (ns, flag) in &p.joined.namespaces {
        if libc::setns(ns.as_raw_fd(), *flag) < 0 {
            fail(errors, b"join the container's namespaces");
        }
    }
    libc::setsid();
    // The container's filter, as its first process got it (runc's order, see seccomp.rs).
    if let Some(f) = p.seccomp.as_ref().filter(|_| !p.no_new_privs) {
        if f.load().is_err() {
            fail(errors, b"load the seccomp filter");
        }
    }
    for cap in &p.drop_bounding {
        libc::prctl(libc::PR_CAPBSET_DROP, *cap);
    }
    libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong);
    if libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) < 0
        || libc::syscall(libc::SYS_setgid, p.gid) < 0
        || libc::syscall(libc::SYS_setuid, p.uid) < 0
    {
        fail(errors, b"switch to the container's user");
    }
    libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0 as libc::c_ulong,
        0 as libc::c_ulong,
        0 as libc::c_ulong,
    );
    // capset(2), version 3: effective = permitted = the wanted set, inheritable empty.
    let mut header = [0x2008_0522u32, 0];
    let data = [p.caps[0], p.caps[0], 0, p.caps[1], p.caps[1], 0];
    if libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) < 0 {
        fail(errors, b"set the container's capabilities");
    }
    if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) < 0 {
        fail(errors, b"set no_new_privs");
    }
    if let Some(f) = p.seccomp.as_ref().filter(|_| p.no_new_privs) {
        if f.load().is_err() {
            fail(errors, b"load the seccomp filter");
        }
    }
    if libc::chdir(p.cwd.as_ptr()) < 0 {
        fail(errors, b"change to the working directory");
    }
    crate::sys::cloexec_from(3).ok();
    // execvp(3)'s search: the next directory on ENOENT (and the like), the first other error.
    for path in &p.candidates {
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        let errno = *libc::__errno_location();
        if !matches!(errno, libc::ENOENT | libc::ENOTDIR | libc::EACCES) || p.candidates.len() == 1
        {
            fail(errors, b"exec the command");
        }
    }
    libc::write(errors, p.not_found.as_ptr().cast(), p.not_found.len());
    libc::_exit(127)
}

/// The paths of the `cgroup.procs` files a new process joins to be with `pid`.
pub(crate) fn procs_paths(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            let unified = Path::new("/sys/fs/cgroup/unified");
            let root = if unified.join("cgroup.procs").exists() {
                unified
            } else {
                Path::new("/sys/fs/cgroup")
            };
            out.push(root.join(path).join("cgroup.procs"));
        } else {
            out.extend(
                controllers
                    .split(',')
                    .filter(|c| !c.starts_with("name="))
                    .map(|c| {
                        Path::new("/sys/fs/cgroup")
                            .join(c)
                            .join(path)
                            .join("cgroup.procs")
                    }),
            );
        }
    }
    out.retain(|p| p.exists());
    out
}
