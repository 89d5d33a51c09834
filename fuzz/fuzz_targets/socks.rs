//! The SOCKS5 handshake, read as the daemon reads it (no byte past what the
//! parser asks for): never a panic, never a need past the bounds, every
//! refusal one line, and every CONNECT a call qrexec carries unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrexec_connect::socks::{self, Connect, MAX_GREETING, MAX_REQUEST, Parsed};

/// Feeds `input` to `parse` a byte at a time as the daemon would, up to
/// what it needs; the outcome and the bytes it took.
fn read<T>(input: &[u8], max: usize, parse: impl Fn(&[u8]) -> Parsed<T>) -> (Parsed<T>, usize) {
    let mut len = 0;
    loop {
        match parse(&input[..len]) {
            Parsed::Need(need) => {
                assert!(need > len && need <= max, "need {need} after {len} bytes");
                if need > input.len() {
                    return (Parsed::Need(need), len);
                }
                // The daemon reads up to `need` in pieces of any size.
                len += 1;
            }
            Parsed::Done(value, used) => {
                assert_eq!(used, len, "done with {used} of {len} bytes read");
                return (Parsed::Done(value, used), len);
            }
            Parsed::Refused(r) => return (Parsed::Refused(r), len),
        }
    }
}

fn one_line(e: &dyn std::fmt::Display) {
    let e = e.to_string();
    assert!(!e.is_empty() && !e.chars().any(char::is_control), "{e:?}");
}

fn check_connect(c: &Connect) {
    let target = c.target.as_str();
    assert!(
        target.starts_with(|ch: char| ch.is_ascii_alphabetic())
            && target.len() <= 31
            && target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
        "{target:?}"
    );
    let port = c.call.as_str().strip_prefix("qubes.ConnectTCP+").unwrap();
    let n: u16 = port.parse().unwrap();
    assert!(n > 0 && n.to_string() == port, "{port:?}");
}

fuzz_target!(|data: &[u8]| {
    let (greeting, used) = read(data, MAX_GREETING, socks::greeting);
    match greeting {
        Parsed::Need(_) => return,
        Parsed::Refused(r) => {
            one_line(&r);
            assert!(r.reply().len() <= 10);
            return;
        }
        Parsed::Done((), _) => {}
    }
    match read(&data[used..], MAX_REQUEST, socks::request).0 {
        Parsed::Need(_) => {}
        Parsed::Done(connect, _) => check_connect(&connect),
        Parsed::Refused(r) => {
            one_line(&r);
            let reply = r.reply();
            assert!(
                reply.is_empty() || (reply.len() == 10 && reply[1] != 0),
                "{reply:?}"
            );
        }
    }
});
