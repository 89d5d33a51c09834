//! Process calls: child exit notification (pidfd), reaping, signals.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::syscall;

/// `pidfd_open(2)`: an fd that becomes readable when the child `pid` exits.
///
/// Works on a child that already exited, as long as it has not been reaped.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor (pidfds are O_CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How a child ended, from `waitpid(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// `waitpid(pid, WNOHANG)`: reaps the child if it has ended.
pub fn try_wait(pid: u32) -> io::Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: status is a writable int.
    let res = syscall!(waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG))?;
    if res == 0 {
        return Ok(None);
    }
    Ok(Some(decode_status(status)))
}

/// `waitpid(pid, 0)`: waits for the child to end and reaps it.
pub fn wait(pid: u32) -> io::Result<Exit> {
    let mut status = 0;
    loop {
        // SAFETY: status is a writable int.
        match syscall!(waitpid(pid as libc::pid_t, &mut status, 0)) {
            Ok(_) => return Ok(decode_status(status)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn decode_status(status: i32) -> Exit {
    if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// `kill(2)`.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    syscall!(kill(pid as libc::pid_t, signal)).map(drop)
}

/// A `signalfd(2)` for a set of signals, which are blocked for normal delivery.
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` (`sigprocmask`) and returns a non-blocking signalfd for them.
    ///
    /// Children do not inherit the block: std resets the signal mask of every
    /// process it spawns.
    pub fn new(signals: &[i32]) -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initializes the set it is given.
        syscall!(sigemptyset(set.as_mut_ptr()))?;
        for &sig in signals {
            // SAFETY: the set was initialized by sigemptyset.
            syscall!(sigaddset(set.as_mut_ptr(), sig))?;
        }
        // SAFETY: the set is initialized; a null old-set pointer is allowed.
        let res =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut()) };
        if res != 0 {
            return Err(io::Error::from_raw_os_error(res));
        }
        // SAFETY: the set is initialized; -1 asks for a new fd.
        let fd = syscall!(signalfd(
            -1,
            set.as_ptr(),
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC
        ))?;
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(SignalFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Reads one pending signal, `None` when there is none.
    pub fn read(&self) -> io::Result<Option<i32>> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = size_of::<libc::signalfd_siginfo>();
        // SAFETY: info is writable for `size` bytes.
        match syscall!(read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size)) {
            Ok(n) if n as usize == size => {
                // SAFETY: the kernel wrote a whole signalfd_siginfo.
                Ok(Some(unsafe { info.assume_init() }.ssi_signo as i32))
            }
            Ok(_) => Err(io::Error::other("short read from signalfd")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

/// `getuid(2)`: the real user id of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid takes no arguments and always succeeds.
    unsafe { libc::getuid() }
}

/// The conventional name of a signal, for logs.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}
