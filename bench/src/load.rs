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

/// One short connection: connect, send a line, read its echo, half-close,
/// read EOF. Returns the time to the first echoed byte.
pub fn one_line(addr: SocketAddr) -> io::Result<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
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
pub fn rate(addr: SocketAddr, parallelism: usize, duration: Duration, max: u64) -> Rate {
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
                        match one_line(addr) {
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
