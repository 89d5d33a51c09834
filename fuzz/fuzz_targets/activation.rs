//! The sd_listen_fds environment (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES):
//! never a panic; a result for us has exactly LISTEN_FDS entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrexec_connect::activation::{self, MAX_FDS};

const OUR_PID: u32 = 4242;

/// A refusal is logged as one line: the input it quotes must not break it.
fn one_line(e: &dyn std::fmt::Display) {
    let e = e.to_string();
    assert!(!e.is_empty() && !e.chars().any(char::is_control), "{e:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // Three values separated by NUL, which an environment value cannot hold;
    // a missing part, or one that is exactly "\x01", is an unset variable.
    let mut parts = s.splitn(3, '\0').map(|p| (p != "\u{1}").then_some(p));
    let (pid, fds, names) = (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    );
    match activation::parse(pid, fds, names, OUR_PID) {
        Ok(Some(list)) => {
            assert_eq!(pid.and_then(|p| p.parse::<u32>().ok()), Some(OUR_PID));
            let count: usize = fds.unwrap().parse().unwrap();
            assert!((1..=MAX_FDS).contains(&count));
            assert_eq!(list.len(), count);
            match names {
                Some(names) => assert!(
                    list.iter()
                        .map(|n| n.as_deref().unwrap())
                        .eq(names.split(':'))
                ),
                None => assert!(list.iter().all(Option::is_none)),
            }
        }
        Ok(None) => {}
        Err(e) => one_line(&e),
    }
});
