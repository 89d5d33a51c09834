//! The positional arguments of the client applets and the arguments of the
//! services: Port, LoopbackAddr, TcpBind, SocketName, and the service
//! applets' Destination and call_argument. Never a panic; each accepts only
//! its one canonical spelling, and each accepted value makes a call that
//! qrexec carries unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrexec_connect::applet::service::{Destination, call_argument};
use qrexec_connect::argument::{LoopbackAddr, Port, SocketName, TcpBind};
use qrexec_connect::call::Call;

fn call_for(service: &str, argument: &str) {
    let call = Call::new(service, Some(argument)).expect("an accepted argument makes a valid call");
    assert_eq!(call.argument(), Some(argument));
}

/// A refusal is logged as one line: the input it quotes must not break it.
fn one_line(e: &dyn std::fmt::Display) {
    let e = e.to_string();
    assert!(!e.is_empty() && !e.chars().any(char::is_control), "{e:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Port::parse(s) {
        Ok(p) => {
            assert!(p.get() >= 1);
            assert_eq!(p.to_string(), s);
            call_for("qubes.ConnectTCP", s);
        }
        Err(e) => one_line(&e),
    }
    match LoopbackAddr::parse(s) {
        Ok(a) => {
            assert!(a.get().is_loopback());
            assert_eq!(a.to_string(), s);
            call_for("qubes.ConnectNFS", s);
        }
        Err(e) => one_line(&e),
    }
    match TcpBind::parse(s) {
        Ok(b) => {
            assert!(b.bind.get().is_loopback());
            assert_eq!(b.to_string(), s);
            call_for("qubes.ConnectTCPBind", s);
        }
        Err(e) => one_line(&e),
    }
    match SocketName::parse(s) {
        Ok(n) => {
            assert_eq!(n.as_str(), s);
            assert!(!s.starts_with('.') && !s.contains('/'));
            call_for("qubes.ConnectUnix", s);
        }
        Err(e) => one_line(&e),
    }
    for applet in [
        "qubes.ConnectUnix",
        "qubes.ConnectTCPBind",
        "qubes.ConnectNFS",
    ] {
        match Destination::parse(applet, s) {
            Ok(_) => call_for(applet, s),
            Err(e) => one_line(&e),
        }
    }
    // QREXEC_SERVICE_ARGUMENT ("\x01": unset), then argv, NUL-separated.
    let mut parts = s.split('\0');
    let env = parts.next().filter(|e| *e != "\u{1}");
    let argv: Vec<&str> = parts.collect();
    match call_argument(&argv, env.map(Into::into)) {
        Ok(argument) => match env {
            Some(env) => assert_eq!(argument, env),
            None => assert_eq!(argument, argv.first().copied().unwrap_or("")),
        },
        Err(e) => one_line(&e),
    }
});
