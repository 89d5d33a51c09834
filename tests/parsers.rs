//! Property tests of every pure parser: thousands of generated inputs each.
//!
//! For any input a parser returns a value or an error and never panics. What
//! it accepts is what qrexec carries unchanged: the model below rewrites a
//! value the way `qrexec-client-vm(1)` does (bytes outside its alphabet become
//! `_`, `$` in a target becomes `@`, a target is cut at 63 bytes), and every
//! accepted value must come out of it unchanged. Where a value has one
//! spelling, printing it and parsing it again gives the same value, and the
//! accepted input is that spelling.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use qrexec_connect::activation::{self, MAX_FDS};
use qrexec_connect::applet::service::{Destination, call_argument};
use qrexec_connect::argument::{LoopbackAddr, MAX_SOCKET_NAME, Port, SocketName, TcpBind};
use qrexec_connect::call::{Call, FdName, MAX_FIELD, MAX_QUBE_NAME, Target};

/// 127.255.255.255: whether a bind to it is refused is the service side's
/// choice (Linux would connect from 127.0.0.1 instead), so the properties
/// leave it out.
const BROADCAST: [u8; 4] = [127, 255, 255, 255];

/// Cases per property: a few thousand, still well under a second each.
const CASES: u32 = 4096;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // A failure is shrunk to a small input, but boundedly.
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

/// What qrexec-client-vm sends for `SERVICE+ARG`.
fn qrexec_call(s: &str) -> Vec<u8> {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-+".contains(&b) {
                b
            } else {
                b'_'
            }
        })
        .collect()
}

/// What qrexec-client-vm sends for a target.
fn qrexec_target(s: &str) -> Vec<u8> {
    s.bytes()
        .take(MAX_FIELD)
        .map(|b| match b {
            b'$' => b'@',
            b if b.is_ascii_alphanumeric() || b"_.-@:".contains(&b) => b,
            _ => b'_',
        })
        .collect()
}

fn carried_as_call(s: &str) -> bool {
    qrexec_call(s) == s.as_bytes()
}

fn carried_as_target(s: &str) -> bool {
    qrexec_target(s) == s.as_bytes()
}

/// Strings that stress the parsers: arbitrary Unicode, and strings over the
/// alphabets that matter here (qrexec's characters, separators, the bytes
/// qrexec rewrites, digits and signs), with and without valid prefixes.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.+:@$/; \\-]{0,80}",
        "[@$]?(default|dispvm|adminvm|anyvm|tag)?[+:]?[A-Za-z0-9_.+@:$ -]{0,40}",
        "[0-9+ -]{0,8}",
        "[0-9]{0,6}-?[0-9.]{0,20}",
        "[\\x00-\\x20\\x7f.:/+é]{0,12}",
        ".{0,300}",
    ]
}

fn qube_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_.-]{0,30}"
}

fn call_string() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-][A-Za-z0-9_.+-]{0,62}"
}

/// A target as it may be written in a FileDescriptorName.
fn target_string() -> impl Strategy<Value = String> {
    prop_oneof![
        qube_name(),
        Just("@default".to_owned()),
        Just("$default".to_owned()),
        Just("@dispvm".to_owned()),
        Just("@adminvm".to_owned()),
        qube_name().prop_map(|t| format!("@dispvm+{t}")),
        qube_name().prop_map(|t| format!("$dispvm:{t}")),
    ]
}

/// Checks what every accepted target must be.
fn check_target(t: &Target) -> Result<(), TestCaseError> {
    let s = t.as_str();
    prop_assert!(!s.is_empty() && s.len() <= MAX_FIELD, "{s:?}");
    prop_assert!(carried_as_target(s), "qrexec would rewrite target {s:?}");
    prop_assert!(!s.contains('$'), "{s:?} not normalised to '@'");
    prop_assert_eq!(&Target::parse(s), &Ok(t.clone()), "target round trip");
    prop_assert_eq!(t.to_string(), s);
    let qube = match s.strip_prefix('@') {
        Some(kw) => match kw.split_once(':') {
            Some(("dispvm", template)) => template,
            Some(_) => return Err(TestCaseError::fail(format!("bad keyword {s:?}"))),
            None => {
                prop_assert!(["default", "dispvm", "adminvm"].contains(&kw), "{s:?}");
                return Ok(());
            }
        },
        None => s,
    };
    prop_assert!(qube.len() <= MAX_QUBE_NAME, "{s:?}");
    prop_assert!(qube.starts_with(|c: char| c.is_ascii_alphabetic()), "{s:?}");
    Ok(())
}

/// Checks what every accepted call must be.
fn check_call(c: &Call) -> Result<(), TestCaseError> {
    let s = c.as_str();
    prop_assert!(!s.is_empty() && s.len() <= MAX_FIELD, "{s:?}");
    prop_assert!(carried_as_call(s), "qrexec would rewrite call {s:?}");
    prop_assert!(!c.service().is_empty(), "{s:?} has no service");
    prop_assert!(!c.service().contains('+'));
    match c.argument() {
        Some(arg) => prop_assert_eq!(format!("{}+{arg}", c.service()), s),
        None => prop_assert_eq!(c.service(), s),
    }
    prop_assert_eq!(&Call::parse(s), &Ok(c.clone()), "call round trip");
    Ok(())
}

/// A refusal is logged as one line: the input it quotes must not break it.
fn one_line(e: &dyn std::fmt::Display) -> Result<(), TestCaseError> {
    let e = e.to_string();
    prop_assert!(!e.is_empty(), "empty error");
    prop_assert!(!e.chars().any(char::is_control), "{e:?}");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_refusal_is_one_line(s in hostile()) {
        let errors = [
            Target::parse(&s).err(),
            Call::parse(&s).err(),
            Call::new(&s, Some(&s)).err(),
            FdName::parse(Some(&s)).err(),
            Port::parse(&s).err(),
            LoopbackAddr::parse(&s).err(),
            TcpBind::parse(&s).err(),
            SocketName::parse(&s).err(),
            activation::parse(Some(&s), Some("1"), None, 1).err(),
            activation::parse(Some("1"), Some(&s), None, 1).err(),
            activation::parse(Some("1"), Some("2"), Some(&s), 1).err(),
        ];
        for e in errors.iter().flatten() {
            one_line(e)?;
        }
    }

    #[test]
    fn target_accepts_only_what_qrexec_carries(s in hostile()) {
        if let Ok(t) = Target::parse(&s) {
            check_target(&t)?;
            // Only the two keyword spellings change the text.
            if !s.starts_with('$') && !s.starts_with("@dispvm+") {
                prop_assert_eq!(t.as_str(), s.as_str());
            }
        }
    }

    #[test]
    fn target_accepts_every_valid_target(s in target_string()) {
        let t = Target::parse(&s).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        check_target(&t)?;
    }

    #[test]
    fn target_refuses_long_qube_names(s in "[a-z][a-z0-9]{31,70}") {
        prop_assert!(Target::parse(&s).is_err());
        let dispvm = format!("@dispvm+{s}");
        prop_assert!(Target::parse(&dispvm).is_err());
    }

    #[test]
    fn call_accepts_only_what_qrexec_carries(s in hostile()) {
        if let Ok(c) = Call::parse(&s) {
            check_call(&c)?;
            prop_assert_eq!(c.as_str(), s.as_str());
        }
    }

    #[test]
    fn call_accepts_every_valid_call(s in call_string()) {
        let c = Call::parse(&s).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        check_call(&c)?;
    }

    #[test]
    fn call_new_keeps_service_and_argument(service in hostile(), argument in proptest::option::of(hostile())) {
        if let Ok(c) = Call::new(&service, argument.as_deref()) {
            check_call(&c)?;
            prop_assert_eq!(c.service(), service.as_str());
            match argument.as_deref() {
                Some(arg) if !arg.is_empty() => prop_assert_eq!(c.argument(), Some(arg)),
                _ => prop_assert_eq!(c.argument(), None),
            }
        }
    }

    #[test]
    fn fd_name_accepts_only_what_qrexec_carries(s in hostile()) {
        match FdName::parse(Some(&s)) {
            Ok(FdName::Unnamed) => {
                prop_assert!(false, "{s:?}: only an unset LISTEN_FDNAMES is unnamed");
            }
            Ok(FdName::Target(t)) => {
                check_target(&t)?;
                prop_assert!(!s.contains(' '));
            }
            Ok(FdName::Full(t, c)) => {
                check_target(&t)?;
                check_call(&c)?;
                prop_assert_eq!(s.matches(' ').count(), 1);
                let full = format!("{t} {c}");
                prop_assert_eq!(FdName::parse(Some(&full)), Ok(FdName::Full(t, c)));
            }
            Err(e) => one_line(&e)?,
        }
    }

    #[test]
    fn fd_name_accepts_both_valid_forms(t in target_string(), c in proptest::option::of(call_string())) {
        let name = match &c {
            Some(c) => format!("{t} {c}"),
            None => t.clone(),
        };
        let parsed = FdName::parse(Some(&name));
        let target = Target::parse(&t).unwrap();
        match c {
            Some(c) => prop_assert_eq!(parsed, Ok(FdName::Full(target, Call::parse(&c).unwrap()))),
            None => prop_assert_eq!(parsed, Ok(FdName::Target(target))),
        }
    }

    #[test]
    fn port_has_one_spelling(s in hostile()) {
        if let Ok(p) = Port::parse(&s) {
            prop_assert!(p.get() >= 1);
            prop_assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn port_round_trips(n in 1u16..) {
        let p = Port::parse(&n.to_string()).unwrap();
        prop_assert_eq!(p.get(), n);
        prop_assert_eq!(Port::parse(&p.to_string()), Ok(p));
        check_call(&Call::new("qubes.ConnectTCP", Some(&p.to_string())).unwrap())?;
    }

    #[test]
    fn port_refuses_other_spellings(n in 0u32..100_000, zeros in 0usize..3, sign in "[+ -]?") {
        let s = format!("{sign}{}{n}", "0".repeat(zeros));
        let canonical = zeros == 0 && sign.is_empty() && (1..=65535).contains(&n);
        prop_assert_eq!(Port::parse(&s).is_ok(), canonical, "{:?}", s);
    }

    #[test]
    fn loopback_addr_has_one_spelling(s in hostile()) {
        if let Ok(a) = LoopbackAddr::parse(&s) {
            prop_assert!(a.get().is_loopback());
            prop_assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn loopback_addr_is_exactly_127_slash_8(
        octets in any::<[u8; 4]>().prop_filter("not the broadcast address", |o| *o != BROADCAST),
    ) {
        let addr = Ipv4Addr::from(octets);
        let parsed = LoopbackAddr::parse(&addr.to_string());
        // 127.255.255.255 is the broadcast address, not a host to bind to.
        prop_assert_eq!(parsed.is_ok(), octets[0] == 127 && octets != [127, 255, 255, 255]);
        if let Ok(a) = parsed {
            prop_assert_eq!(a.get(), addr);
        }
    }

    #[test]
    fn tcp_bind_has_one_spelling(s in hostile()) {
        if let Ok(b) = TcpBind::parse(&s) {
            prop_assert_eq!(b.to_string(), s.as_str());
            prop_assert!(b.bind.get().is_loopback());
            check_call(&Call::new("qubes.ConnectTCPBind", Some(&s)).unwrap())?;
        }
    }

    #[test]
    fn tcp_bind_round_trips(
        port in 1u16..,
        host in any::<[u8; 3]>().prop_filter("not the broadcast address", |h| *h != [255; 3]),
    ) {
        let s = format!("{port}-127.{}.{}.{}", host[0], host[1], host[2]);
        let b = TcpBind::parse(&s).unwrap();
        prop_assert_eq!(b.port.get(), port);
        prop_assert_eq!(b.to_string(), s.as_str());
        prop_assert_eq!(TcpBind::parse(&b.to_string()), Ok(b));
        check_call(&Call::new("qubes.ConnectTCPBind", Some(&s)).unwrap())?;
    }

    #[test]
    fn socket_name_is_one_safe_component(s in hostile()) {
        if let Ok(n) = SocketName::parse(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert!(!s.is_empty() && s.len() <= MAX_SOCKET_NAME);
            prop_assert!(!s.starts_with('.') && !s.contains('/') && !s.contains('+'));
            prop_assert!(carried_as_call(&s));
            let call = Call::new("qubes.ConnectUnix", Some(&s)).unwrap();
            check_call(&call)?;
            prop_assert_eq!(call.argument(), Some(s.as_str()));
        }
    }

    #[test]
    fn socket_name_accepts_valid_names(s in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,44}") {
        let n = SocketName::parse(&s).unwrap();
        prop_assert_eq!(n.to_string(), s);
    }

    #[test]
    fn service_destination_is_what_the_call_names(
        applet in prop_oneof![
            Just("qubes.ConnectUnix".to_owned()),
            Just("qubes.ConnectTCPBind".to_owned()),
            Just("qubes.ConnectNFS".to_owned()),
            hostile(),
        ],
        argument in prop_oneof![hostile(), "[0-9]{1,5}-127\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}"],
    ) {
        match Destination::parse(&applet, &argument) {
            Ok(destination) => {
                // Only what a qrexec call to this service can carry.
                check_call(&Call::new(&applet, Some(&argument)).unwrap())?;
                match destination {
                    Destination::Unix(name) => {
                        prop_assert_eq!(applet.as_str(), "qubes.ConnectUnix");
                        prop_assert_eq!(name.as_str(), argument.as_str());
                    }
                    Destination::Tcp { port, bind } => {
                        prop_assert!(bind.get().is_loopback());
                        prop_assert!(bind.get().octets() != BROADCAST);
                        match applet.as_str() {
                            "qubes.ConnectNFS" => {
                                prop_assert_eq!(port.get(), 2049);
                                prop_assert_eq!(bind.to_string(), argument);
                            }
                            "qubes.ConnectTCPBind" => {
                                prop_assert_eq!(format!("{port}-{bind}"), argument);
                            }
                            other => prop_assert!(false, "{other} gave a TCP destination"),
                        }
                    }
                }
            }
            Err(e) => one_line(&e)?,
        }
    }

    #[test]
    fn service_argument_comes_from_the_environment(
        args in proptest::collection::vec(hostile(), 0..3),
        env in proptest::option::of(hostile()),
    ) {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match call_argument(&argv, env.clone().map(Into::into)) {
            Ok(argument) => {
                prop_assert!(argv.len() <= 1);
                match &env {
                    Some(env) => {
                        prop_assert_eq!(&argument, env);
                        prop_assert!(argv.first().is_none_or(|a| a == env));
                    }
                    None => prop_assert_eq!(argument.as_str(), argv.first().copied().unwrap_or("")),
                }
            }
            Err(e) => one_line(&e)?,
        }
    }

    #[test]
    fn activation_parse_is_total(
        pid in proptest::option::of(prop_oneof![Just("4242".to_owned()), Just("1".to_owned()), hostile()]),
        fds in proptest::option::of(prop_oneof!["[0-9]{1,5}", hostile()]),
        names in proptest::option::of(hostile()),
    ) {
        let parsed = activation::parse(pid.as_deref(), fds.as_deref(), names.as_deref(), 4242);
        match parsed {
            Ok(Some(list)) => {
                prop_assert_eq!(pid.as_deref().unwrap().parse::<u32>(), Ok(4242));
                let count: usize = fds.as_deref().unwrap().parse().unwrap();
                prop_assert!((1..=MAX_FDS).contains(&count));
                prop_assert_eq!(list.len(), count);
                match names.as_deref() {
                    Some(names) => {
                        let want: Vec<Option<String>> =
                            names.split(':').map(|n| Some(n.to_owned())).collect();
                        prop_assert_eq!(list, want);
                    }
                    None => prop_assert!(list.iter().all(Option::is_none)),
                }
            }
            Ok(None) => {
                // Not for us: unset, another process, or no fds.
                let ours = pid.as_deref().and_then(|p| p.parse::<u32>().ok()) == Some(4242);
                let zero = fds.as_deref().and_then(|f| f.parse::<usize>().ok()) == Some(0);
                prop_assert!(pid.is_none() || fds.is_none() || !ours || zero);
            }
            Err(e) => one_line(&e)?,
        }
    }

    #[test]
    fn activation_parse_pairs_names_with_fds(names in proptest::collection::vec("[^:]{0,20}", 1..50), extra in -1i32..=1) {
        let joined = names.join(":");
        let count = (names.len() as i32 + extra).max(0) as usize;
        let parsed = activation::parse(Some("7"), Some(&count.to_string()), Some(&joined), 7);
        match extra {
            0 => prop_assert_eq!(
                parsed,
                Ok(Some(names.into_iter().map(Some).collect()))
            ),
            _ if count == 0 => prop_assert_eq!(parsed, Ok(None)),
            _ => prop_assert!(parsed.is_err()),
        }
    }
}
