//! The `qrexec-connect` binary: everything is in the library, so that tests
//! and fuzz targets reach the same parsers.

fn main() -> std::process::ExitCode {
    qrexec_connect::main()
}
