//! Every libc call of the bench, wrapped so the rest stays safe Rust: those
//! the tests and the stand-in make too come from the shared test-side layer
//! (`tests/support`), the bench's own follow.
//!
//! The only module where `unsafe` is allowed; each block says why it is sound.
#![allow(unsafe_code)]

pub use test_support::sys::{
    getpid, pipe, raise_nofile, read, set_linger_zero, shutdown_write, stdio, write, write_all,
};

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: the caller upholds the function's contract; see each use.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// `splice(2)` of up to `len` bytes from `from` to `to`, one of them a pipe.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets mean "the file position"; both fds are open.
    syscall!(splice(
        from.as_raw_fd(),
        std::ptr::null_mut(),
        to.as_raw_fd(),
        std::ptr::null_mut(),
        len,
        libc::SPLICE_F_MOVE,
    ))
    .map(|n| n as usize)
}

/// `fcntl(F_SETPIPE_SZ)`: best effort, the default stays on failure.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) {
    let _ = syscall!(fcntl(
        fd.as_raw_fd(),
        libc::F_SETPIPE_SZ,
        size as libc::c_int
    ));
}

/// `close(2)` of a descriptor this process does not hold as an `OwnedFd`
/// (stdout, in the stand-in).
pub fn close_raw(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it afterwards.
    unsafe { libc::close(fd) };
}

/// Takes ownership of a descriptor inherited across exec (sd_listen_fds).
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
    // SAFETY: the fd is open (fcntl succeeded) and is taken exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes a variable from the environment; start-up only, before any thread.
pub fn remove_env(name: &str) {
    // SAFETY: called before the program starts a thread.
    unsafe { std::env::remove_var(name) }
}

/// `kill(2)`; ESRCH (already gone) is not an error here.
pub fn kill(pid: u32, signal: i32) {
    let _ = test_support::sys::kill(pid as libc::pid_t, signal);
}

/// `waitpid(pid, WNOHANG)` (pid -1: any child): `Some(pid)` when one was reaped,
/// `None` when none has ended yet, `Err(ECHILD)` when there are no children.
pub fn try_reap(pid: i32) -> io::Result<Option<u32>> {
    let mut status = 0;
    // SAFETY: `status` is a writable int.
    let res = syscall!(waitpid(pid, &mut status, libc::WNOHANG))?;
    Ok((res > 0).then_some(res as u32))
}

/// `waitpid(pid, 0)`: the child's exit code (128+N when killed by signal N).
pub fn wait(pid: u32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a writable int.
        match syscall!(waitpid(pid as libc::pid_t, &mut status, 0)) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    })
}

/// `getrusage(RUSAGE_CHILDREN)`: user + system CPU of every reaped descendant.
pub fn children_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `ru` is valid for writes of a `rusage`.
    syscall!(getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr())).expect("getrusage");
    // SAFETY: getrusage succeeded and filled it.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `prctl(PR_SET_CHILD_SUBREAPER)`: orphaned descendants become our children,
/// so we reap them (and count their CPU) instead of init.
pub fn set_child_subreaper() -> io::Result<()> {
    syscall!(prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong)).map(drop)
}

/// `accept4(2)` of a blocking connection (CLOEXEC), retrying on EINTR and
/// ECONNABORTED.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: null address pointers ask for no peer address.
        let res = syscall!(accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        ));
        match res {
            // SAFETY: accept4 returned a new descriptor owned by nobody else.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED)) => {}
            Err(e) => return Err(e),
        }
    }
}

/// A program, its arguments and environment, ready for repeated `posix_spawn`.
pub struct Spawner {
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Spawner {
    pub fn new(argv: Vec<CString>, envp: Vec<CString>) -> Self {
        assert!(!argv.is_empty());
        Spawner { argv, envp }
    }

    /// `posix_spawn(3)` with `stdio` as the child's stdin and stdout; the
    /// child's pid.
    pub fn spawn(&self, stdio: BorrowedFd<'_>) -> io::Result<u32> {
        let ptrs = |v: &[CString]| {
            let mut p: Vec<*mut libc::c_char> = v.iter().map(|s| s.as_ptr().cast_mut()).collect();
            p.push(std::ptr::null_mut());
            p
        };
        let argv = ptrs(&self.argv);
        let envp = ptrs(&self.envp);
        let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: `actions` is initialized by posix_spawn_file_actions_init
        // before any other use and destroyed below; the argv and envp arrays
        // are null-terminated and outlive the call.
        unsafe {
            let errno = libc::posix_spawn_file_actions_init(actions.as_mut_ptr());
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let fd = stdio.as_raw_fd();
            let mut errno = libc::posix_spawn_file_actions_adddup2(actions.as_mut_ptr(), fd, 0);
            if errno == 0 {
                errno = libc::posix_spawn_file_actions_adddup2(actions.as_mut_ptr(), fd, 1);
            }
            let mut pid: libc::pid_t = 0;
            if errno == 0 {
                errno = libc::posix_spawn(
                    &mut pid,
                    self.argv[0].as_ptr(),
                    actions.as_ptr(),
                    std::ptr::null(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                );
            }
            libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            Ok(pid as u32)
        }
    }
}

/// A TCP connection to `addr` from source address `bind` (port chosen by the
/// kernel): `socket`, `bind`, `connect`. IPv4 only, as the relays use.
pub fn tcp_connect_from(addr: std::net::SocketAddr, bind: std::net::IpAddr) -> io::Result<OwnedFd> {
    let (std::net::SocketAddr::V4(addr), std::net::IpAddr::V4(bind)) = (addr, bind) else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "IPv4 only"));
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let fd = syscall!(socket(
        libc::AF_INET,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        0
    ))?;
    // SAFETY: socket returned a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sockaddr(bind, 0);
    // SAFETY: `local` is a sockaddr_in of `len` bytes.
    syscall!(bind(fd.as_raw_fd(), (&raw const local).cast(), len))?;
    let remote = sockaddr(*addr.ip(), addr.port());
    // SAFETY: `remote` is a sockaddr_in of `len` bytes.
    syscall!(connect(fd.as_raw_fd(), (&raw const remote).cast(), len))?;
    Ok(fd)
}

/// Waits up to `timeout` for child `pid` to end, with `pidfd_open(2)` and
/// `poll(2)`: wakes the moment it ends. Whether it ended (not yet reaped).
pub fn wait_for_exit(pid: u32, timeout: Duration) -> io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    test_support::sys::poll(fd.as_fd(), libc::POLLIN, Some(timeout))
}
