//! Every `unsafe` call of the workspace: the few syscalls nix does not wrap safely.
//!
//! Each function is small, documents the kernel behaviour it relies on, and is only ever called
//! from the single-threaded shim (or the child it forks), where fork-like calls are sound.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// What `clone_process` returns in each of the two processes.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// Creates a child process like fork(2), but in the new namespaces named by `flags`
/// (`CLONE_NEWNS`, `CLONE_NEWPID`, ...). With a null stack, clone(2) without `CLONE_VM`
/// duplicates the caller's address space exactly as fork does; with `CLONE_NEWPID` the child is
/// pid 1 of a fresh PID namespace, which `unshare(2)` cannot do for the caller itself.
///
/// Callers must be single-threaded: the child gets a copy of one thread only.
pub fn clone_process(flags: CloneFlags) -> io::Result<Forked> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: raw clone(2) with a null stack and no CLONE_VM/CLONE_SETTLS behaves as fork(2): the
    // child runs on a copy-on-write copy of this stack. The shim is single-threaded, so no lock
    // held by another thread can be inherited in a locked state.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// fork(2) for the single-threaded shim and its helpers.
pub fn fork() -> io::Result<Forked> {
    clone_process(CloneFlags::empty())
}

/// Ends the calling process at once, without running atexit handlers or flushing stdio buffers
/// that the child shares with its parent (`_exit(2)`).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Sets IFF_UP on the loopback device of the caller's network namespace (a new network namespace
/// starts with `lo` down, and containers of a pod talk over it). Uses SIOCSIFFLAGS on a datagram
/// socket, see netdevice(7).
pub fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is a plain C struct for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into `req`, a valid ifreq whose name is NUL-terminated.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds ifru_flags.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, which is valid and initialised above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// execve(2) with an explicit environment. Returns only on failure.
pub fn execve(path: &CString, argv: &[CString], env: &[CString]) -> io::Error {
    match nix::unistd::execve(path, argv, env) {
        Ok(never) => match never {},
        Err(errno) => errno.into(),
    }
}

/// Moves `fd` to `target` (dup2), clearing close-on-exec on the copy.
pub fn dup_onto(fd: BorrowedFd<'_>, target: i32) -> io::Result<()> {
    // SAFETY: dup2 on a borrowed, open descriptor; `target` is one of the standard streams,
    // which the child owns and replaces on purpose.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec, so a container inherits only its
/// standard streams (close_range(2) with CLOSE_RANGE_CLOEXEC, Linux 5.11+).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: with CLOSE_RANGE_CLOEXEC, close_range only sets a flag on open descriptors.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every descriptor from `first` up (close_range(2)).
pub fn close_from(first: u32) {
    // SAFETY: close_range only closes descriptors; callers own every descriptor above `first`.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// Sets a signal's disposition to "ignore".
pub fn ignore_signal(sig: nix::sys::signal::Signal) -> nix::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet};
    let action = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no handler code, so nothing async-signal-unsafe can run.
    unsafe { nix::sys::signal::sigaction(sig, &action) }.map(drop)
}

/// Gives a child the signal state of a fresh process: every disposition default (ignored ones
/// survive execve(2)) and nothing blocked (the mask survives too).
pub fn reset_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { nix::sys::signal::sigaction(sig, &action) };
    }
    let _ = SigSet::empty().thread_set_mask();
}

/// Makes the terminal on standard input the caller's controlling terminal (TIOCSCTTY, tty_ioctl(4));
/// the caller must lead a session without one (just after setsid).
pub fn set_controlling_terminal() -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The controlling and the process side of a new terminal in the current mount namespace's
/// devpts (its /dev/ptmx), and the process side's path.
pub fn open_terminal() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd, String)> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok((master.into(), slave, name))
}

/// Sets a terminal's window size (TIOCSWINSZ, tty_ioctl(4)); its foreground process group gets
/// SIGWINCH.
pub fn set_window_size(fd: BorrowedFd<'_>, columns: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which points at a live local.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A detached copy of the mount tree at `source` (open_tree(2) `OPEN_TREE_CLONE`, its submounts
/// included) whose owners are seen through `userns`'s id mapping (an idmapped mount,
/// mount_setattr(2) `MOUNT_ATTR_IDMAP`): an owner id on disk is that id inside the user
/// namespace. Read-only if asked. Attach it with `attach_tree`.
pub fn idmapped_tree(
    source: &std::path::Path,
    userns: BorrowedFd<'_>,
    read_only: bool,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags =
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: open_tree reads the NUL-terminated path, which lives until the call returns.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) };
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_IDMAP;
    if read_only {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    attr.userns_fd = userns.as_raw_fd() as u64;
    // SAFETY: mount_setattr reads `attr` (a live local of the size given) and the empty path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches a detached mount tree (`idmapped_tree`) at `target` (move_mount(2)).
pub fn attach_tree(tree: BorrowedFd<'_>, target: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: move_mount reads the two NUL-terminated paths, which live until it returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends one descriptor over a unix socket (SCM_RIGHTS, unix(7)) with a one-byte message.
pub fn send_fd(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    send_with_fd(socket, b"t", fd)
}

/// Sends `data` with one descriptor attached to its first byte (SCM_RIGHTS, unix(7)).
pub fn send_with_fd(socket: BorrowedFd<'_>, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &[io::IoSlice::new(data)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )?;
    // The rest of a long message goes without the descriptor, already sent.
    let mut rest = &data[sent..];
    while !rest.is_empty() {
        let n = nix::unistd::write(socket, rest)?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Receives one descriptor sent by `send_fd`; `None` if the peer closed without sending.
pub fn recv_fd(socket: BorrowedFd<'_>) -> io::Result<Option<std::os::fd::OwnedFd>> {
    recv_with_fd(socket, &mut [0u8; 1]).map(|(_, fd)| fd)
}

/// Reads what arrives next into `buf`, with the descriptor attached to it if one was
/// (`send_with_fd`): the byte count and the descriptor.
pub fn recv_with_fd(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<std::os::fd::OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::FromRawFd;
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: SCM_RIGHTS installed this descriptor in our table just now; nothing
                // else owns it, so the OwnedFd is its only owner.
                let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(fd);
            }
        }
    }
    Ok((msg.bytes, received))
}

// -------------------------------------------------------------------------------------------------
// bpf(2) for the devices cgroup on cgroup v2 (devices.rs), and RLIMIT_MEMLOCK, which kernels
// before 5.11 charge BPF programs to.
// -------------------------------------------------------------------------------------------------

/// `enum bpf_cmd` values of include/uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;

/// The BPF_PROG_LOAD member of `union bpf_attr` (include/uapi/linux/bpf.h) up to
/// `expected_attach_type`, every field at its C offset. bpf(2) copies `size` bytes and takes the
/// fields past them as zero; a kernel whose union is shorter than `size` wants the extra bytes
/// zero, which `Default` makes them.
#[repr(C)]
#[derive(Default)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The BPF_PROG_ATTACH member of `union bpf_attr`, up to `replace_bpf_fd`.
#[repr(C)]
#[derive(Default)]
struct BpfProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const _: () = assert!(std::mem::size_of::<BpfProgLoadAttr>() == 72);
const _: () = assert!(std::mem::size_of::<BpfProgAttachAttr>() == 20);

/// bpf(2) with one member of `union bpf_attr`.
///
/// # Safety
///
/// `T` must be the member `cmd` reads, and every pointer inside `attr` must be valid for what
/// the kernel does with it during the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    let size = std::mem::size_of::<T>() as libc::c_uint;
    // SAFETY: `attr` is a live, initialised T of `size` bytes; the kernel reads at most `size`
    // bytes of it, and the caller vouches for the pointers it holds.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// Loads an eBPF program (bpf(2) BPF_PROG_LOAD) from `insns`, each the 8 bytes of a
/// `struct bpf_insn`, and returns its descriptor (close-on-exec, as every bpf(2) descriptor).
/// With a non-empty `log`, the verifier writes its NUL-terminated account there (log_level 1;
/// the kernel wants at least 128 bytes).
pub fn bpf_prog_load(
    prog_type: u32,
    insns: &[[u8; 8]],
    license: &std::ffi::CStr,
    name: &str,
    log: &mut [u8],
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    let insn_cnt =
        u32::try_from(insns.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let mut attr = BpfProgLoadAttr {
        prog_type,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    if !log.is_empty() {
        attr.log_level = 1;
        // Kernels before 5.2 refuse a log_size of 16 MiB or more.
        attr.log_size = u32::try_from(log.len())
            .unwrap_or(u32::MAX)
            .min((u32::MAX >> 8) - 1);
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    // At most 15 bytes and a NUL (BPF_OBJ_NAME_LEN); the rest of the array stays zero.
    for (dst, src) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    // SAFETY: attr is BPF_PROG_LOAD's member. insns points at insn_cnt × 8 readable bytes,
    // license at a NUL-terminated string, log_buf (when set) at log_size writable bytes; all are
    // borrowed for the whole call, and the kernel keeps none of these pointers after it.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches a loaded program to a cgroup directory (bpf(2) BPF_PROG_ATTACH); the cgroup then
/// holds its own reference on the program.
pub fn bpf_prog_attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
) -> io::Result<()> {
    let mut attr = BpfProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        replace_bpf_fd: 0,
    };
    // SAFETY: attr is BPF_PROG_ATTACH's member and holds no pointers; both descriptors are
    // borrowed, so open, for the call.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

/// The caller's RLIMIT_MEMLOCK (getrlimit(2)).
pub fn memlock_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer, which points at a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Sets RLIMIT_MEMLOCK for the whole process (setrlimit(2)); raising the hard limit needs
/// CAP_SYS_RESOURCE.
pub fn set_memlock_limit(limit: libc::rlimit) -> io::Result<()> {
    // SAFETY: setrlimit only reads one rlimit through the pointer, which points at a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives free heap memory back to the kernel (malloc_trim(3)): glibc keeps what a burst of
/// allocations freed (thousands of watch events in the agent, a container spec parsed by a
/// shim) in its arenas otherwise, and the process's RSS stays at its peak.
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes the allocator's own locks and touches only free chunks; it is
    // safe to call from any thread at any time.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
