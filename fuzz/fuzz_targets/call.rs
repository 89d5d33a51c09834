//! FileDescriptorName, Target and Call: never a panic, and nothing accepted
//! that qrexec-client-vm would rewrite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrexec_connect::call::{Call, FdName, MAX_FIELD, Target};

/// Whether qrexec-client-vm sends this `SERVICE+ARG` unchanged.
fn carried_as_call(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b))
}

/// Whether qrexec-client-vm sends this target unchanged (no `$`, no cut).
fn carried_as_target(s: &str) -> bool {
    s.len() <= MAX_FIELD
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@:".contains(&b))
}

fn check_target(t: &Target) {
    assert!(carried_as_target(t.as_str()), "{t:?}");
    assert_eq!(Target::parse(t.as_str()).as_ref(), Ok(t));
}

fn check_call(c: &Call) {
    let s = c.as_str();
    assert!(!s.is_empty() && s.len() <= MAX_FIELD, "{s:?}");
    assert!(carried_as_call(s), "{s:?}");
    assert!(!c.service().is_empty(), "{s:?}");
    assert_eq!(Call::parse(s).as_ref(), Ok(c));
}

/// A refusal is logged as one line: the input it quotes must not break it.
fn one_line(e: &dyn std::fmt::Display) {
    let e = e.to_string();
    assert!(!e.is_empty() && !e.chars().any(char::is_control), "{e:?}");
}

fuzz_target!(|data: &[u8]| {
    // Names come from the environment, which std only reads as UTF-8.
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Target::parse(s) {
        Ok(t) => check_target(&t),
        Err(e) => one_line(&e),
    }
    match Call::parse(s) {
        Ok(c) => {
            check_call(&c);
            assert_eq!(c.as_str(), s);
        }
        Err(e) => one_line(&e),
    }
    if let Some((service, argument)) = s.split_once('\0') {
        match Call::new(service, Some(argument)) {
            Ok(c) => {
                check_call(&c);
                assert_eq!(c.service(), service);
            }
            Err(e) => one_line(&e),
        }
    }
    match FdName::parse(Some(s)) {
        Ok(FdName::Unnamed) => panic!("{s:?}: only an unset LISTEN_FDNAMES is unnamed"),
        Ok(FdName::Target(t)) => check_target(&t),
        Ok(FdName::Full(t, c)) => {
            check_target(&t);
            check_call(&c);
        }
        Err(e) => one_line(&e),
    }
});
