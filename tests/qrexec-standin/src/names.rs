//! What qrexec does, silently, to the target and call it is given before
//! anyone looks at them: qrexec-client-vm turns every `$` of the target into
//! `@` and copies it into a 64-byte field (63 bytes and a NUL), and qrexec
//! replaces each byte outside `A-Za-z0-9_.-+` of `SERVICE+ARG`, and outside
//! `A-Za-z0-9_.-@:` of the target, with `_`.
//!
//! A name changed like that reaches another service or another qube than the
//! one written in the socket unit; the stand-in does the same so that a test
//! can show qrexec-connect refuses such names first.

/// The longest target that survives the fixed-size field.
pub const MAX_TARGET: usize = 63;

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// The target as qrexec delivers it.
pub fn deliver_target(raw: &[u8]) -> Vec<u8> {
    raw.iter()
        .take(MAX_TARGET)
        .map(|&b| match b {
            b'$' => b'@',
            b if plain(b) || b == b'@' || b == b':' => b,
            _ => b'_',
        })
        .collect()
}

/// `SERVICE+ARG` as qrexec delivers it.
pub fn deliver_call(raw: &[u8]) -> Vec<u8> {
    raw.iter()
        .map(|&b| if plain(b) || b == b'+' { b } else { b'_' })
        .collect()
}

/// Splits `SERVICE+ARG` at the first `+`; the argument is empty without one.
pub fn split_call(call: &str) -> (&str, &str) {
    call.split_once('+').unwrap_or((call, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> String {
        String::from_utf8(deliver_target(s.as_bytes())).unwrap()
    }

    fn call(s: &[u8]) -> String {
        String::from_utf8(deliver_call(s)).unwrap()
    }

    #[test]
    fn targets() {
        assert_eq!(target("work"), "work");
        assert_eq!(target("@dispvm:fedora-dvm"), "@dispvm:fedora-dvm");
        assert_eq!(target("$default"), "@default");
        assert_eq!(target("wo$rk"), "wo@rk");
        assert_eq!(target("wo/rk"), "wo_rk");
        assert_eq!(target("a b;c+d"), "a_b_c_d");
        assert_eq!(target("wörk"), "w__rk", "each byte of a UTF-8 character");
        let long = "a".repeat(70);
        assert_eq!(target(&long), "a".repeat(MAX_TARGET));
    }

    #[test]
    fn calls() {
        assert_eq!(call(b"qubes.ConnectTCP+22"), "qubes.ConnectTCP+22");
        assert_eq!(call(b"qubes.X+a:b"), "qubes.X+a_b");
        assert_eq!(call(b"qubes.X+a/b@c$d"), "qubes.X+a_b_c_d");
        assert_eq!(call(b"a\nb"), "a_b");
        let long = format!("s+{}", "a".repeat(100));
        assert_eq!(call(long.as_bytes()), long, "no length cut for calls");
        assert_eq!(split_call("qubes.X+1+2"), ("qubes.X", "1+2"));
        assert_eq!(split_call("qubes.X"), ("qubes.X", ""));
        assert_eq!(split_call("qubes.X+"), ("qubes.X", ""));
    }
}
