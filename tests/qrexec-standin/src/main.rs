//! `qrexec-client-vm` for the tests: see the library.
//!
//! No Rust `main`: the standard runtime would set SIGPIPE to ignored before
//! we could record what the caller handed over (ignored signals are
//! inherited across exec, and a leak of SIG_IGN is what the tests look for).
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    libc::c_int::from(qrexec_standin::main())
}
