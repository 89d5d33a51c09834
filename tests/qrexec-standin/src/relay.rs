//! Moving the bytes between the caller (our fds 0 and 1) and the service,
//! with the end-of-stream behaviour of qrexec-client-vm:
//!
//! - the caller's EOF on fd 0 becomes `shutdown(SHUT_WR)` of the service's
//!   input, so it reads EOF, and replies still flow;
//! - the end of the service's output becomes `shutdown(0, SHUT_WR)` with
//!   `--use-stdin-socket`, so a caller whose socket is both fd 0 and fd 1 reads
//!   EOF at once; without it only `close(1)`, which such a caller never
//!   notices: it sees EOF only when the process exits.
//!
//! One thread per direction with blocking I/O (fd 0 may come with
//! O_NONBLOCK set; then the thread polls).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::PoisonError;
use std::thread;

use crate::{CHILD, TAG, sys};

/// How the caller's side is used.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `--use-stdin-socket`: fd 0 carries both directions.
    pub stdin_socket: bool,
    /// `--prefix-data`: sent to the service before what fd 0 brings.
    pub prefix: Option<Vec<u8>>,
}

enum Failed {
    Read,
    Write,
}

fn write_all(to: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match sys::write(to, buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sys::wait_ready(to, libc::POLLOUT)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies until EOF on `from`.
fn copy(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Failed> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match sys::read(from, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sys::wait_ready(from, libc::POLLIN).map_err(|_| Failed::Read)?;
                continue;
            }
            Err(_) => return Err(Failed::Read),
        };
        write_all(to, &buf[..n]).map_err(|_| Failed::Write)?;
    }
}

fn caller_output(caller: &Caller) -> BorrowedFd<'static> {
    sys::stdio(if caller.stdin_socket { 0 } else { 1 })
}

/// What qrexec-client-vm does when the service's output ends.
fn end_output(caller: &Caller) {
    if caller.stdin_socket {
        let _ = sys::shutdown_write(sys::stdio(0));
    } else {
        sys::close_stdout();
    }
}

/// Caller to service, then EOF to the service.
fn forward_input(caller: &Caller, to: BorrowedFd<'_>) {
    if let Some(prefix) = &caller.prefix
        && write_all(to, prefix).is_err()
    {
        return;
    }
    let _ = copy(sys::stdio(0), to);
    let _ = sys::shutdown_write(to);
}

/// Service to caller, then the end of output. Returns false when the caller
/// could not take the bytes (it went away).
fn forward_output(caller: &Caller, from: BorrowedFd<'_>) -> bool {
    match copy(from, caller_output(caller)) {
        Ok(()) | Err(Failed::Read) => {
            end_output(caller);
            true
        }
        Err(Failed::Write) => false,
    }
}

/// The exit status of a process as a shell reports it (128+N for signal N).
pub fn status_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => 255,
    }
}

/// Runs an executable service with its stdin and stdout on two separate
/// socketpairs and its stderr on a pipe copied to ours; returns its status.
pub fn executable(
    caller: &Caller,
    path: &Path,
    argument: &str,
    env: Vec<(String, String)>,
    cwd: &Path,
) -> u8 {
    let pairs = UnixStream::pair().and_then(|a| Ok((a, UnixStream::pair()?)));
    let Ok(((ours_in, theirs_in), (ours_out, theirs_out))) = pairs else {
        say!("{TAG}: socketpair failed");
        return 1;
    };
    let mut command = Command::new(path);
    if !argument.is_empty() {
        command.arg(argument);
    }
    command
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::from(OwnedFd::from(theirs_in)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(Stdio::piped());
    sys::unblock_signals_in_child(&mut command);
    let mut running = CHILD.lock().unwrap_or_else(PoisonError::into_inner);
    let spawned = command.spawn();
    // The service's ends must be closed here, or its output never ends.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            say!("{TAG}: cannot start {}: {e}", path.display());
            return 125;
        }
    };
    *running = child.id() as i32;
    drop(running);
    let stderr = child.stderr.take().expect("stderr is piped");
    {
        let caller = caller.clone();
        thread::spawn(move || forward_input(&caller, ours_in.as_fd()));
    }
    let output = {
        let caller = caller.clone();
        // Dropping `ours_out` when the caller is gone tells the service (EPIPE).
        thread::spawn(move || forward_output(&caller, ours_out.as_fd()))
    };
    let errors = thread::spawn(move || {
        let _ = copy(stderr.as_fd(), sys::stdio(2));
    });
    let status = match child.wait() {
        Ok(status) => status_code(status),
        Err(e) => {
            say!("{TAG}: cannot wait for the service: {e}");
            1
        }
    };
    // qrexec reports the status after the last of the output.
    let _ = output.join();
    let _ = errors.join();
    status
}

/// Relays a connected socket service (Unix or TCP); status 0 once both
/// directions are over.
pub fn connection(caller: &Caller, stream: OwnedFd) -> u8 {
    let input_side = match stream.try_clone() {
        Ok(fd) => fd,
        Err(e) => {
            say!("{TAG}: dup failed: {e}");
            return 1;
        }
    };
    let input = {
        let caller = caller.clone();
        thread::spawn(move || forward_input(&caller, input_side.as_fd()))
    };
    if !forward_output(caller, stream.as_fd()) {
        // The caller went away: so does the service's connection.
        let _ = sys::shutdown_both(stream.as_fd());
    }
    let _ = input.join();
    0
}
