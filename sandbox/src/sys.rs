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
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds ifru_flags.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, which is valid and initialised above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
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

/// Sends one descriptor over a unix socket (SCM_RIGHTS, unix(7)) with a one-byte message.
pub fn send_fd(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &[io::IoSlice::new(b"t")],
        &cmsg,
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives one descriptor sent by `send_fd`; `None` if the peer closed without sending.
pub fn recv_fd(socket: BorrowedFd<'_>) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS installed this descriptor in our table just now; nothing else
                // owns it, so the OwnedFd is its only owner.
                return Ok(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Ok(None)
}
