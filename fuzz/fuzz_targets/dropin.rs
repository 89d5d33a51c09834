//! The drop-in readers (src/dropin/): unit-file text, specifiers, Listen
//! values and the resolution: never a panic, every refusal one line, and
//! what a Listen value parses to reads back the same from its display.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use qrexec_connect::dropin::{
    ListenAddr, SockAddr, Source, Specifiers, resolve, search, specifier, syntax,
};

/// A refusal is logged as one line: the input it quotes must not break it.
fn one_line(e: &str) {
    assert!(!e.is_empty() && !e.chars().any(char::is_control), "{e:?}");
}

fn values(unit: &str) -> Specifiers {
    Specifiers {
        unit: unit.to_owned(),
        runtime_dir: Some("/run/user/1000".into()),
        home: Some("/home/user".into()),
        user: Some("user".into()),
        uid: 1000,
    }
}

fn no_ifaces(name: &str) -> Option<u32> {
    (name == "lo").then_some(1)
}

fn listen_value(s: &str) {
    match ListenAddr::parse(s) {
        Ok(addr) => {
            let shown = addr.to_string();
            assert_eq!(
                ListenAddr::parse(&shown).as_ref(),
                Ok(&addr),
                "{s:?} shown as {shown:?}"
            );
        }
        Err(e) => one_line(&e),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // The whole input as a drop-in; up to the first NUL also as a Listen
    // value, a specifier text and a unit name.
    let word = s.split('\0').next().unwrap_or("");
    let unit = "qrexec-connect-tcp@1234.socket";

    listen_value(word);
    match specifier::expand(word, &values(unit)) {
        Ok(out) => {
            if !word.contains('%') {
                assert_eq!(out, word);
            }
            listen_value(&out);
        }
        Err(e) => one_line(&e),
    }
    if let Ok(unescaped) = specifier::unescape(word) {
        assert!(!unescaped.contains('\0'));
    }
    if word.len() < 256 && !word.contains('/') {
        let dirs = search::dropin_dirs(&[PathBuf::from("/u")], word);
        assert!(dirs.len() <= 4 * word.len() + 4, "{word:?}: {dirs:?}");
        let _ = specifier::expand("%n%N%p%P%i%I%j%J%f", &values(word));
    }

    match syntax::parse(s) {
        Ok(lines) => {
            for line in lines {
                if let syntax::Setting::Listen(_, v) = &line.setting {
                    // systemd strips only its WHITESPACE, " \t\n\r": a
                    // vertical tab or a form feed stays in the value.
                    let blanks: &[char] = &[' ', '\t', '\n', '\r'];
                    assert!(
                        !v.is_empty() && v.trim_matches(blanks) == v.as_str(),
                        "{v:?}"
                    );
                    assert!(!v.contains(['\n', '\r', '\0']), "{v:?}");
                }
            }
        }
        Err(e) => one_line(&e),
    }
    let source = match Source::read("fuzz.conf", s, &values(unit)) {
        Ok(source) => source,
        Err(e) => return one_line(&e),
    };
    let fds = [
        SockAddr::Inet("127.0.0.1:1234".parse().unwrap()),
        SockAddr::Inet("[::]:1234".parse().unwrap()),
        SockAddr::UnixPath("/run/user/1000/s".into()),
    ];
    for n in 0..=fds.len() {
        match resolve(
            unit,
            "work",
            &fds[..n],
            std::slice::from_ref(&source),
            &no_ifaces,
        ) {
            Ok(resolved) => assert_eq!(resolved.len(), n),
            Err(e) => one_line(&e),
        }
    }
});
