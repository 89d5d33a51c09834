//! The service-side floor: the least program that relays a qrexec call to a
//! local socket. Connects, then splices fd 0 -> socket in a second thread and
//! socket -> fd 1 in the main one, half-closing each direction at its EOF.
//!
//! `bench-splice-relay unix PATH` or `bench-splice-relay tcp HOST:PORT [BINDADDR]`.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use qrexec_connect_bench::{copy, sys};

fn connect(args: &[String]) -> Result<OwnedFd, String> {
    match args {
        [kind, path] if kind == "unix" => UnixStream::connect(path)
            .map(OwnedFd::from)
            .map_err(|e| format!("connect to {path}: {e}")),
        [kind, addr, rest @ ..] if kind == "tcp" && rest.len() <= 1 => {
            let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
            match rest.first() {
                None => TcpStream::connect(addr)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("connect to {addr}: {e}")),
                Some(bind) => {
                    let bind = bind.parse().map_err(|e| format!("{bind}: {e}"))?;
                    sys::tcp_connect_from(addr, bind)
                        .map_err(|e| format!("connect to {addr} from {bind}: {e}"))
                }
            }
        }
        _ => Err("usage: bench-splice-relay unix PATH | tcp HOST:PORT [BINDADDR]".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let socket = match connect(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-splice-relay: {e}");
            return ExitCode::from(1);
        }
    };
    let ok = std::thread::scope(|s| {
        let upstream = s.spawn(|| {
            let r = copy::splice(sys::stdio(0), socket.as_fd());
            copy::end_write(socket.as_fd());
            r
        });
        let down = copy::splice(socket.as_fd(), sys::stdio(1));
        if sys::shutdown_write(sys::stdio(1)).is_err() {
            sys::close_raw(1);
        }
        let up = upstream.join().expect("relay thread");
        up.is_ok() && down.is_ok()
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
