//! The client-side floor: the least program that does the daemon's job.
//! Takes one listening socket by sd_listen_fds (fd 3), and for each
//! connection `posix_spawn`s the given program with the connection as its
//! stdin and stdout, then reaps whatever children have ended. No logging, no
//! limits, no stderr capture: what a forwarder cannot do with less.
//!
//! `bench-client-floor PROGRAM [ARGS...]`, under `systemd-socket-activate`.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use qrexec_connect_bench::sys;

fn main() -> ExitCode {
    let args: Vec<CString> = std::env::args_os()
        .skip(1)
        .map(|a| CString::new(a.as_bytes()).expect("no NUL in arguments"))
        .collect();
    let ours = std::env::var("LISTEN_PID").ok() == Some(sys::getpid().to_string());
    if args.is_empty() || !ours || std::env::var("LISTEN_FDS").as_deref() != Ok("1") {
        eprintln!("usage: systemd-socket-activate -l ADDR bench-client-floor PROGRAM [ARGS...]");
        return ExitCode::from(2);
    }
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        sys::remove_env(name);
    }
    let listener = match sys::take_inherited_fd(3) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("bench-client-floor: fd 3: {e}");
            return ExitCode::from(2);
        }
    };
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).expect("no NUL in the environment")
        })
        .collect();
    let spawner = sys::Spawner::new(args, env);
    loop {
        let connection = match sys::accept(listener.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bench-client-floor: accept: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = spawner.spawn(connection.as_fd()) {
            eprintln!("bench-client-floor: spawn: {e}");
        }
        drop(connection);
        while let Ok(Some(_)) = sys::try_reap(-1) {}
    }
}
