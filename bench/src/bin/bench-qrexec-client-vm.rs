//! The stand-in for `qrexec-client-vm(1)` that every client-side peer runs:
//! its command line, and a remote service that echoes. It copies stdin to
//! stdout with plain read/write (a real qrexec-client-vm copies too) and
//! half-closes at EOF as the real one does: with `--use-stdin-socket`,
//! `shutdown(0, SHUT_WR)`; without it (qrexec before 4.2.19), `close(1)`.
//! Compiled and static, so that the forwarder's cost is what differs.

use std::process::ExitCode;

use qrexec_connect_bench::{copy, sys};

const USAGE: &str = "usage: qrexec-client-vm [options] target_vmname program_ident [local_program [local program arguments]]
Options:
  --buffer-size=BUFFER_SIZE  minimum vchan buffer size (ignored: echo stand-in)
  -t, --filter-escape-chars-stdout  (ignored)
  -T, --filter-escape-chars-stderr  (ignored)
  --no-filter-escape-chars-stdout, --no-filter-escape-chars-stderr  (ignored)
  --use-stdin-socket  fd 0 is a socket: shutdown(0, SHUT_WR) when the service closes its output
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut stdin_socket = false;
    let mut words = Vec::new();
    let mut options_done = false;
    for arg in &args {
        if options_done || !arg.starts_with('-') {
            // getopt stops at the first non-option, as the real one's does.
            options_done = true;
            words.push(arg.as_str());
            continue;
        }
        match arg.as_str() {
            "--" => options_done = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--use-stdin-socket" => stdin_socket = true,
            _ => {}
        }
    }
    if words.len() < 2 {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    }
    let (stdin, stdout) = (sys::stdio(0), sys::stdio(1));
    if let Err(e) = copy::read_write(stdin, stdout) {
        eprintln!("qrexec-client-vm (bench echo): {e}");
        return ExitCode::from(1);
    }
    if stdin_socket {
        copy::end_write(stdin);
    } else {
        sys::close_raw(1);
    }
    ExitCode::SUCCESS
}
