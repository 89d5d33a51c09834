//! Starting a program: `posix_spawn(3)` with the descriptors a connection's
//! qrexec-client-vm needs, and nothing else.
//!
//! std's `Command` wants stdin and stdout as two descriptors, so every spawn
//! cost a `dup` of the connection and its `close`; it also asks glibc to check
//! a third descriptor. Here the one socket becomes both fd 0 and fd 1 in the
//! child, and the argument vector is built once per program, so a spawn
//! allocates nothing but glibc's own list of file actions.

use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::process::Pid;

unsafe extern "C" {
    /// The process's environment, as execve(2) takes it.
    static environ: *const *mut libc::c_char;
}

/// A program and its arguments, ready to be started any number of times.
pub struct Program {
    path: CString,
    /// Owns the strings `argv` points into (their heap buffers never move).
    _args: Vec<CString>,
    /// `argv[0]` (the path), the arguments, then a null pointer.
    argv: Vec<*mut libc::c_char>,
}

impl Program {
    /// `Err(InvalidInput)` when the path or an argument contains a NUL byte.
    pub fn new(path: &Path, args: &[&OsStr]) -> io::Result<Self> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NUL byte in {:?}", s.to_string_lossy()),
                )
            })
        };
        let path = c(path.as_os_str())?;
        let mut args = std::iter::once(Ok(path.clone()))
            .chain(args.iter().map(|a| c(a)))
            .collect::<io::Result<Vec<CString>>>()?;
        args.shrink_to_fit();
        let argv = args
            .iter()
            .map(|a| a.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect();
        Ok(Program {
            path,
            _args: args,
            argv,
        })
    }

    /// `posix_spawn(3)`: starts the program with `stdio` as its stdin and
    /// stdout, `stderr` as its stderr, this process's environment, an empty
    /// signal mask and SIGPIPE at its default action; returns its pid. Every
    /// other descriptor of ours is close-on-exec.
    ///
    /// Both descriptors must be above 2 (`InvalidInput` otherwise): a dup2
    /// onto fd 0 or 1 would replace one still to be copied. Ours always are,
    /// since std opens fds 0 to 2 (on /dev/null if need be) before `main`.
    pub fn spawn(&self, stdio: BorrowedFd<'_>, stderr: BorrowedFd<'_>) -> io::Result<Pid> {
        let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: each object is initialized by its _init function before
        // any other use, and destroyed exactly once after it, in place.
        unsafe {
            check(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
            let result = match check(libc::posix_spawnattr_init(attr.as_mut_ptr())) {
                Ok(()) => {
                    let r = self.spawn_with(actions.as_mut_ptr(), attr.as_mut_ptr(), stdio, stderr);
                    libc::posix_spawnattr_destroy(attr.as_mut_ptr());
                    r
                }
                Err(e) => Err(e),
            };
            libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
            result
        }
    }

    /// # Safety
    /// `actions` and `attr` must point to initialized objects.
    unsafe fn spawn_with(
        &self,
        actions: *mut libc::posix_spawn_file_actions_t,
        attr: *mut libc::posix_spawnattr_t,
        stdio: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
    ) -> io::Result<Pid> {
        let (stdio, stderr) = (stdio.as_raw_fd(), stderr.as_raw_fd());
        if stdio <= 2 || stderr <= 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a child's stdio must come from descriptors above 2",
            ));
        }
        // SAFETY: the caller passes initialized objects; the descriptors are
        // open (borrowed); `path` and the null-terminated `argv` live in
        // `self`; `environ` is the process's environment, which nothing
        // changes once the daemon runs (see `sys::remove_env`).
        unsafe {
            check(libc::posix_spawn_file_actions_adddup2(actions, stdio, 0))?;
            check(libc::posix_spawn_file_actions_adddup2(actions, stdio, 1))?;
            check(libc::posix_spawn_file_actions_adddup2(actions, stderr, 2))?;
            // A child starts with no signal blocked, whatever mask we were
            // started with, and with SIGPIPE at its default action: Rust's
            // runtime ignores it in this process, and an ignored signal
            // stays ignored across execve(2). Handled signals need no reset:
            // execve sets them back to their default.
            let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            check(libc::posix_spawnattr_setsigmask(attr, empty.as_ptr()))?;
            let mut default = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(default.as_mut_ptr());
            libc::sigaddset(default.as_mut_ptr(), libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigdefault(attr, default.as_ptr()))?;
            check(libc::posix_spawnattr_setflags(
                attr,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                self.path.as_ptr(),
                actions,
                attr,
                self.argv.as_ptr(),
                environ,
            ))?;
            Ok(Pid::from_raw(pid))
        }
    }
}

/// The posix_spawn family returns an error number instead of setting errno.
fn check(errno: libc::c_int) -> io::Result<()> {
    match errno {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    fn sh(script: &str) -> Program {
        Program::new(
            Path::new("/bin/sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
        )
        .unwrap()
    }

    /// Runs `program` on one end of a socketpair; returns our end, the
    /// stderr read end and the pid.
    fn start(program: &Program) -> (UnixStream, std::fs::File, Pid) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (stderr, child_stderr) = crate::sys::pipe().unwrap();
        let pid = program.spawn(theirs.as_fd(), child_stderr.as_fd()).unwrap();
        (ours, std::fs::File::from(stderr), pid)
    }

    #[test]
    fn one_socket_is_stdin_and_stdout() {
        let program = sh("read line; echo \"got $line\"; echo oops >&2");
        let (mut ours, mut stderr, pid) = start(&program);
        ours.write_all(b"x\n").unwrap();
        let mut out = String::new();
        ours.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        stderr.read_to_string(&mut err).unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("got x\n", "oops\n"));
        assert_eq!(
            crate::sys::process::wait(pid).unwrap(),
            crate::sys::process::Exit::Code(0)
        );
    }

    #[test]
    fn the_child_has_no_signal_blocked_and_sigpipe_default() {
        let mut block = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `block` is initialized by sigemptyset before sigaddset and
        // pthread_sigmask read it; the mask is this test thread's own.
        unsafe {
            libc::sigemptyset(block.as_mut_ptr());
            libc::sigaddset(block.as_mut_ptr(), libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, block.as_ptr(), std::ptr::null_mut());
        }
        let program = sh("grep -e SigBlk -e SigIgn /proc/self/status");
        let (ours, stderr, pid) = start(&program);
        // SAFETY: as above; restores this thread's mask.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, block.as_ptr(), std::ptr::null_mut());
        }
        drop(stderr);
        let mut out = String::new();
        (&ours).read_to_string(&mut out).unwrap();
        crate::sys::process::wait(pid).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("SigBlk:\t0000000000000000"));
        // SIGPIPE (bit 12), ignored in this test process by Rust's runtime,
        // is not ignored in the child.
        let ignored = lines
            .next()
            .and_then(|l| l.strip_prefix("SigIgn:\t"))
            .unwrap();
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        assert_eq!(
            ignored & (1 << (libc::SIGPIPE - 1)),
            0,
            "SigIgn {ignored:x}"
        );
    }

    #[test]
    fn refuses_what_it_cannot_pass() {
        let nul = Program::new(Path::new("/bin/sh"), &[OsStr::new("a\0b")]);
        assert_eq!(nul.err().unwrap().kind(), io::ErrorKind::InvalidInput);
        let program = sh("true");
        let (_, pipe) = crate::sys::pipe().unwrap();
        let stdin = std::io::stdin();
        let low = program.spawn(stdin.as_fd(), pipe.as_fd());
        assert_eq!(low.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let missing = Program::new(Path::new("/nonexistent/program"), &[]).unwrap();
        let (a, _b): (OwnedFd, OwnedFd) = UnixStream::pair()
            .map(|(a, b)| (a.into(), b.into()))
            .unwrap();
        let err = missing.spawn(a.as_fd(), pipe.as_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}
