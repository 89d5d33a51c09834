//! The load generator: many short connections, or one long one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::pattern::{MAX_CHUNK, Pattern};
use crate::sys;

/// The request of a short connection; the echo must return it unchanged.
pub const LINE: &[u8] = b"GET / qrexec-connect bench\n";
/// No connection, read or write of the load waits longer than this.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// A rate point stops early after this many failed connections.
const MAX_ERRORS: u64 = 20;

/// The qube a SOCKS5 client asks for (the stand-in ignores it).
pub const SOCKS_QUBE: &str = "work.qube";

/// How a connection reaches the echo behind a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The listener forwards what it accepts: the line goes in at once.
    Direct,
    /// The listener is a SOCKS5 proxy: first a greeting offering no
    /// authentication, then a CONNECT to `work.qube:port`, each awaiting its
    /// reply, as a client with `socks5h://` does.
    Socks5 { port: u16 },
}

/// A connection with the load's timeouts, its handshake (if any) done.
pub fn connect(addr: SocketAddr, via: Via) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    if let Via::Socks5 { port } = via {
        socks5(&mut s, port)?;
    }
    Ok(s)
}

/// The greeting: version 5, one method, "no authentication".
const SOCKS_GREETING: [u8; 3] = [5, 1, 0];
/// The method reply that accepts it.
const SOCKS_METHOD: [u8; 2] = [5, 0];
/// The success reply of qrexec-connect-socks: VER REP RSV, IPv4 0.0.0.0:0.
const SOCKS_SUCCEEDED: [u8; 10] = [5, 0, 0, 1, 0, 0, 0, 0, 0, 0];

/// A CONNECT to domain name `name`, `port` (RFC 1928, section 4).
pub fn socks5_request(name: &str, port: u16) -> Vec<u8> {
    let mut req = vec![5, 1, 0, 3, name.len() as u8];
    req.extend_from_slice(name.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    req
}

/// The SOCKS5 handshake for `work.qube:port`; any reply but success is an
/// error that shows it.
fn socks5(s: &mut TcpStream, port: u16) -> io::Result<()> {
    s.write_all(&SOCKS_GREETING)?;
    expect_reply(s, &SOCKS_METHOD, "method")?;
    s.write_all(&socks5_request(SOCKS_QUBE, port))?;
    expect_reply(s, &SOCKS_SUCCEEDED, "CONNECT")
}

fn expect_reply<const N: usize>(s: &mut TcpStream, want: &[u8; N], what: &str) -> io::Result<()> {
    let mut got = [0u8; N];
    s.read_exact(&mut got).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("SOCKS5: EOF before the {what} reply"),
        ),
        _ => e,
    })?;
    if got != *want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SOCKS5: {what} reply {got:02x?}, not {want:02x?}"),
        ));
    }
    Ok(())
}

/// One short connection: connect (and the handshake of `via`), send a line,
/// read its echo, half-close, read EOF. Returns the time to the first echoed
/// byte.
pub fn one_line(addr: SocketAddr, via: Via) -> io::Result<Duration> {
    let start = Instant::now();
    let mut s = connect(addr, via)?;
    s.write_all(LINE)?;
    let first = echo_and_eof(&mut s, start)?;
    Ok(first)
}

/// Reads the echo of LINE (returning when its first byte came, measured from
/// `start`), half-closes and expects EOF.
pub fn echo_and_eof(s: &mut TcpStream, start: Instant) -> io::Result<Duration> {
    let first = read_line_echo(s, start)?;
    s.shutdown(Shutdown::Write)?;
    expect_eof(s)?;
    no_time_wait(s);
    Ok(first)
}

/// Once both FINs have passed, lets the close leave no TIME_WAIT socket.
pub fn no_time_wait(s: &TcpStream) {
    let _ = sys::set_linger_zero(s.as_fd());
}

/// Reads the echo of LINE; the time its first byte came, from `start`.
pub fn read_line_echo(s: &mut impl Read, start: Instant) -> io::Result<Duration> {
    let mut buf = [0u8; LINE.len()];
    let mut got = 0;
    let mut first = None;
    while got < buf.len() {
        match s.read(&mut buf[got..])? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF before the echo",
                ));
            }
            n => {
                first.get_or_insert_with(|| start.elapsed());
                got += n;
            }
        }
    }
    if buf != LINE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong echo"));
    }
    Ok(first.expect("read at least one byte"))
}

/// Reads to EOF; more data is an error.
pub fn expect_eof(s: &mut impl Read) -> io::Result<()> {
    let mut byte = [0u8; 1];
    match s.read(&mut byte)? {
        0 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "data after the echo",
        )),
    }
}

/// An error of the load in words; a read or write past TIMEOUT says so
/// (the OS reports it as EAGAIN).
pub fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer within {} s", TIMEOUT.as_secs())
        }
        _ => e.to_string(),
    }
}

/// What a rate point measured.
#[derive(Default)]
pub struct Rate {
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Whole-connection latencies (connect to EOF), in milliseconds.
    pub latencies_ms: Vec<f64>,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    /// Adds another slice of the same point.
    pub fn add(&mut self, other: Rate) {
        self.completed += other.completed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
        self.latencies_ms.extend(other.latencies_ms);
    }
}

/// Short connections from `parallelism` threads, each starting a new one as
/// soon as its last ended, until `duration` has passed or `max` were started.
pub fn rate(addr: SocketAddr, via: Via, parallelism: usize, duration: Duration, max: u64) -> Rate {
    let started = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let first_error = Mutex::new(None);
    let begin = Instant::now();
    let deadline = begin + duration;
    let latencies: Vec<Vec<f64>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallelism)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    while Instant::now() < deadline
                        && started.fetch_add(1, Ordering::Relaxed) < max
                        && errors.load(Ordering::Relaxed) < MAX_ERRORS
                    {
                        let t = Instant::now();
                        match one_line(addr, via) {
                            Ok(_) => mine.push(t.elapsed().as_secs_f64() * 1e3),
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                first_error.lock().unwrap().get_or_insert(describe(&e));
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let latencies_ms: Vec<f64> = latencies.into_iter().flatten().collect();
    Rate {
        completed: latencies_ms.len() as u64,
        errors: errors.into_inner(),
        first_error: first_error.into_inner().unwrap(),
        elapsed: begin.elapsed(),
        latencies_ms,
    }
}

/// Writes `bytes` of the pattern into `writer` (then `half_close`s it) while
/// reading and checking the echo from `reader` until EOF. Returns the time
/// from the call to EOF.
pub fn bulk<R: Read, W: Write + Send>(
    mut reader: R,
    mut writer: W,
    half_close: impl FnOnce(&W) + Send,
    bytes: u64,
    pattern: &Pattern,
) -> Result<Duration, String> {
    let start = Instant::now();
    std::thread::scope(|s| {
        let sender = s.spawn(move || -> io::Result<()> {
            let mut sent = 0;
            while sent < bytes {
                let n = (bytes - sent).min(MAX_CHUNK as u64 / 2) as usize;
                writer.write_all(pattern.at(sent, n))?;
                sent += n as u64;
            }
            half_close(&writer);
            Ok(())
        });
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut got: u64 = 0;
        let received = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if !pattern.matches(got, &buf[..n]) {
                        break Err(format!("echoed data differs near byte {got}"));
                    }
                    got += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("read after {got} bytes: {e}")),
            }
        };
        let elapsed = start.elapsed();
        let sent = sender.join().expect("sender thread");
        received?;
        sent.map_err(|e| format!("write: {e}"))?;
        if got != bytes {
            return Err(format!("{got} bytes echoed of {bytes}"));
        }
        Ok(elapsed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks5_request_is_rfc_1928_domain_name_connect() {
        assert_eq!(
            socks5_request("work.qube", 8080),
            b"\x05\x01\x00\x03\x09work.qube\x1f\x90"
        );
    }
}
