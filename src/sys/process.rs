//! Process calls: reaping children (`waitpid(2)`), sending signals
//! (`kill(2)`), and receiving them on a self-pipe (`sigaction(2)`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::syscall;

/// A process id (`pid_t`), as the kernel gives it: by `posix_spawn`,
/// `waitpid`, `SO_PEERCRED` and `SCM_CREDENTIALS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(libc::pid_t);

impl Pid {
    pub const fn from_raw(pid: libc::pid_t) -> Self {
        Pid(pid)
    }
}

/// std gives a child's id as a `u32` (`Child::id`); the kernel's pids fit an `i32`.
impl From<u32> for Pid {
    fn from(pid: u32) -> Self {
        Pid(pid as libc::pid_t)
    }
}

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How a child ended, from `waitpid(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// `waitpid(-1, WNOHANG)`: reaps any one child that has ended, with its pid;
/// `None` when none has (or there are no children).
pub fn try_wait_any() -> io::Result<Option<(Pid, Exit)>> {
    let mut status = 0;
    // SAFETY: `status` is a writable int.
    match syscall!(waitpid(-1, &mut status, libc::WNOHANG)) {
        Ok(0) => Ok(None),
        Ok(pid) => Ok(Some((Pid(pid), decode_status(status)))),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `waitpid(pid, 0)`: waits for the child to end and reaps it.
pub fn wait(pid: Pid) -> io::Result<Exit> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a writable int.
        match syscall!(waitpid(pid.0, &mut status, 0)) {
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
pub fn kill(pid: Pid, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    syscall!(kill(pid.0, signal)).map(drop)
}

/// The write end of the self-pipe, for the signal handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Writes the signal's number into the self-pipe; async-signal-safe.
extern "C" fn on_signal(signal: libc::c_int) {
    // SAFETY: write(2) and errno access are async-signal-safe; the byte lives
    // on this handler's stack. A full pipe drops the byte, which is fine: the
    // signals already queued there wake the loop just the same.
    unsafe {
        let errno = *libc::__errno_location();
        let byte = signal as u8;
        libc::write(
            SIGNAL_PIPE.load(Ordering::Relaxed),
            (&byte as *const u8).cast(),
            1,
        );
        *libc::__errno_location() = errno;
    }
}

/// Signals delivered as bytes on a pipe (the self-pipe trick), for an event loop.
///
/// A handler rather than a `signalfd(2)`: signalfd needs the signals blocked,
/// and a blocked mask is inherited by every child across exec (a
/// qrexec-client-vm with SIGTERM blocked would ignore the daemon's SIGTERM),
/// while a handled signal is reset to its default there. Children thus start
/// with the dispositions they expect from any spawner, including std's
/// `Command` (used for the start-up probe), not only from `sys::spawn`,
/// which also resets the mask.
pub struct SignalPipe {
    read: OwnedFd,
}

impl SignalPipe {
    /// Installs the handler for `signals` (`sigaction(2)`), which writes to
    /// a new non-blocking `pipe2(2)`. One SignalPipe per process: a second
    /// one is `Err(AlreadyExists)`, and changes nothing.
    pub fn new(signals: &[i32]) -> io::Result<Self> {
        let (read, write) = super::pipe_with(libc::O_NONBLOCK)?;
        SIGNAL_PIPE
            .compare_exchange(-1, write.as_raw_fd(), Ordering::Relaxed, Ordering::Relaxed)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "signals already go to another pipe in this process",
                )
            })?;
        // The handler writes to it for the rest of the process's life.
        let _ = write.into_raw_fd();
        for &signal in signals {
            // SAFETY: an all-zero sigaction is a valid value; fields are set below.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SA_NOCLDSTOP: a child that stops has not ended.
            action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            // SAFETY: sa_mask is a writable sigset_t inside `action`.
            syscall!(sigemptyset(&mut action.sa_mask))?;
            // SAFETY: `action` is initialized and its handler is
            // async-signal-safe; a null old-action pointer is allowed.
            syscall!(sigaction(signal, &action, std::ptr::null_mut()))?;
        }
        Ok(SignalPipe { read })
    }

    /// Reads pending signals into `buf`, one byte each; an empty slice when
    /// there is none. Fewer than `buf.len()` means none is left.
    pub fn read<'a>(&self, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        match super::read(self.read.as_fd(), buf) {
            Ok(n) => Ok(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(&[]),
            Err(e) => Err(e),
        }
    }

    /// The read end, to register with the event loop.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_signal_pipe_is_an_error() {
        // No signals: the test process keeps its dispositions. Whichever
        // test makes the first pipe, a second one is refused.
        let _first = SignalPipe::new(&[]);
        let second = SignalPipe::new(&[]).err().expect("a second SignalPipe");
        assert_eq!(second.kind(), io::ErrorKind::AlreadyExists);
    }
}
