//! Socket calls: inspecting passed sockets, accepting, naming addresses, and
//! TCP connections from a chosen source address (bind before connect).
//!
//! Man pages: socket(7), unix(7), ip(7), tcp(7), getsockopt(2), accept(2).

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::process::Pid;
pub use super::sockaddr::SockAddr;
use super::sockaddr::decode;
use super::syscall;

/// Fills a zeroed `sockaddr_storage` with `fill` (`getsockname(2)`,
/// `getpeername(2)`, `accept4(2)`: each takes a pointer to the address and
/// one to its length, and writes both), then decodes it.
fn with_sockaddr<R>(
    fill: impl FnOnce(*mut libc::sockaddr, *mut libc::socklen_t) -> io::Result<R>,
) -> io::Result<(R, SockAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let result = fill(storage.as_mut_ptr().cast(), &mut len)?;
    // SAFETY: all zeroes is a valid sockaddr_storage, and the kernel wrote
    // an address of `len` bytes (cut to the storage's size) into it.
    let addr = decode(unsafe { storage.assume_init_ref() }, len);
    Ok((result, addr))
}

/// `getsockname(2)`: the local address of a socket.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SockAddr> {
    let (_, addr) = with_sockaddr(|addr, len| {
        // SAFETY: `addr` and `len` describe a writable sockaddr_storage.
        syscall!(getsockname(fd.as_raw_fd(), addr, len))
    })?;
    Ok(addr)
}

/// A plain C value that `getsockopt(2)` may write and `setsockopt(2)` read.
///
/// # Safety
/// Every bit pattern of its size, all zeroes included, is a valid value.
unsafe trait SockOptValue: Copy {}
// SAFETY: an integer: any bits are a valid value.
unsafe impl SockOptValue for libc::c_int {}
// SAFETY: three integers (pid, uid, gid): any bits are a valid value.
unsafe impl SockOptValue for libc::ucred {}
// SAFETY: two integers (seconds, microseconds): any bits are a valid value.
unsafe impl SockOptValue for libc::timeval {}

/// `getsockopt(2)` of an option whose value is a `T`.
fn getsockopt<T: SockOptValue>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` and `len` describe a writable T.
    syscall!(getsockopt(
        fd.as_raw_fd(),
        level,
        name,
        value.as_mut_ptr().cast(),
        &mut len
    ))?;
    // SAFETY: zeroed, then (partly) written by the kernel: any bytes are a
    // valid T (SockOptValue).
    Ok(unsafe { value.assume_init() })
}

/// `setsockopt(2)` of an option whose value is a `T`.
fn setsockopt<T: SockOptValue>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: `value` is a readable T of the size given.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        level,
        name,
        (&value as *const T).cast(),
        size_of::<T>() as libc::socklen_t
    ))
    .map(drop)
}

/// What `getsockopt(2)` says about a passed socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// `SO_DOMAIN`: AF_INET, AF_INET6, AF_UNIX, AF_VSOCK, ...
    pub domain: i32,
    /// `SO_TYPE`: SOCK_STREAM, SOCK_DGRAM, ...
    pub kind: i32,
    /// `SO_ACCEPTCONN`: a listening socket (otherwise a connected one).
    pub listening: bool,
}

/// `getsockopt(SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN)`.
pub fn socket_info(fd: BorrowedFd<'_>) -> io::Result<SocketInfo> {
    Ok(SocketInfo {
        domain: getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        kind: getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
        listening: getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0,
    })
}

/// `accept4(SOCK_CLOEXEC)`: a new connection, blocking (children get it as
/// stdio), never inherited by anyone but the child it is given to.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, SockAddr)> {
    let (fd, addr) = with_sockaddr(|addr, len| {
        // SAFETY: `addr` and `len` describe a writable sockaddr_storage.
        syscall!(accept4(listener.as_raw_fd(), addr, len, libc::SOCK_CLOEXEC))
    })?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, addr))
}

/// The process at the other end of a Unix socket (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Pid,
    pub uid: u32,
}

/// `getpeername(2)`: the remote address of a connected socket.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<SockAddr> {
    let (_, addr) = with_sockaddr(|addr, len| {
        // SAFETY: `addr` and `len` describe a writable sockaddr_storage.
        syscall!(getpeername(fd.as_raw_fd(), addr, len))
    })?;
    Ok(addr)
}

/// `getsockopt(SO_PEERCRED)`.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let cred: libc::ucred = getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED)?;
    Ok(PeerCred {
        pid: Pid::from_raw(cred.pid),
        uid: cred.uid,
    })
}

/// A Unix stream socketpair many children can write their stderr into:
/// (ours, theirs), both close-on-exec. Ours is non-blocking and has
/// `SO_PASSCRED`, so that every read tells which process wrote what it
/// returns (see `recv_from_process`); theirs stays blocking, as a stderr is.
pub fn stderr_socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a writable array of two ints, as socketpair requires.
    syscall!(socketpair(
        libc::AF_UNIX,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        0,
        fds.as_mut_ptr()
    ))?;
    // SAFETY: socketpair succeeded: two new descriptors that nothing else owns.
    let (ours, theirs) = unsafe { super::owned_pair(fds) };
    setsockopt::<libc::c_int>(ours.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    super::set_nonblocking(ours.as_fd(), true)?;
    // Nothing flows towards the children: a read of their stderr sees EOF.
    shutdown(ours.as_fd(), std::net::Shutdown::Write)?;
    Ok((ours, theirs))
}

/// `recvmsg(2)` on a socket with `SO_PASSCRED`: bytes written by one
/// process, and its pid (`None` if the kernel attached none). With
/// `SO_PASSCRED` set, a Unix stream socket never joins the writes of two
/// processes in one read (unix(7), `SCM_CREDENTIALS`), so the pid holds for
/// every byte returned.
pub fn recv_from_process(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<Pid>)> {
    // Room for one control message holding a ucred, aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below are.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>();
    // SAFETY: msg points to a writable buffer (iov) and control area, both
    // alive for the call.
    let n = syscall!(recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC))?;
    let mut pid = None;
    // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG
    // macros walk only within it. A SCM_CREDENTIALS message carries a ucred,
    // a SCM_RIGHTS one descriptors now ours (read unaligned: CMSG_DATA
    // promises no alignment).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let len = ((*cmsg).cmsg_len as usize).saturating_sub(data as usize - cmsg as usize);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) if len >= size_of::<libc::ucred>() => {
                    let cred: libc::ucred = std::ptr::read_unaligned(data.cast());
                    pid = Some(Pid::from_raw(cred.pid));
                }
                // Nobody should send us descriptors on a stderr; whoever
                // does must not make us keep them.
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..len / size_of::<libc::c_int>() {
                        let fd: libc::c_int =
                            std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                        drop(OwnedFd::from_raw_fd(fd));
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, pid))
}

/// `recv(MSG_DONTWAIT)`: what is there to read, without waiting, on a
/// socket that stays blocking for the child it is handed to later.
pub fn recv_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = syscall!(recv(
        fd.as_raw_fd(),
        buf.as_mut_ptr().cast(),
        buf.len(),
        libc::MSG_DONTWAIT
    ))?;
    Ok(n as usize)
}

/// `send(MSG_DONTWAIT | MSG_NOSIGNAL)`: no wait, and EPIPE rather than
/// SIGPIPE when the peer is gone; may send less than all of `buf`.
pub fn send_nowait(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = syscall!(send(
        fd.as_raw_fd(),
        buf.as_ptr().cast(),
        buf.len(),
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
    ))?;
    Ok(n as usize)
}

/// `ioctl(FIONREAD)`: bytes waiting to be read on a socket.
pub fn queued_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    syscall!(ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n))?;
    Ok(n.max(0) as usize)
}

/// `setsockopt(SO_RCVTIMEO)`: a blocking receive (and a splice out of the
/// socket) fails with EAGAIN after `timeout` without data; `None` waits
/// for ever.
pub fn set_recv_timeout(
    fd: BorrowedFd<'_>,
    timeout: Option<std::time::Duration>,
) -> io::Result<()> {
    let timeout = timeout.unwrap_or_default();
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, value)
}

/// `shutdown(2)` of one or both directions.
pub fn shutdown(fd: BorrowedFd<'_>, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown takes plain integers and touches no memory of ours.
    syscall!(shutdown(fd.as_raw_fd(), how)).map(drop)
}

/// An IPv4 address as `bind(2)` and `connect(2)` take it.
fn sockaddr_v4(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// `socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC)`: a new, blocking TCP socket.
pub fn tcp_v4() -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers and touches no memory of ours.
    let fd = syscall!(socket(
        libc::AF_INET,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        0
    ))?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bind(2)` of a TCP socket to `local` with port 0, the port chosen by
/// the following `connect(2)` (`IP_BIND_ADDRESS_NO_PORT`, so that only the
/// whole four-tuple must be unique, not the source port).
pub fn bind_v4_for_connect(fd: BorrowedFd<'_>, local: Ipv4Addr) -> io::Result<()> {
    setsockopt::<libc::c_int>(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
    let sin = sockaddr_v4(SocketAddrV4::new(local, 0));
    // SAFETY: `sin` is a valid sockaddr_in of the length given.
    syscall!(bind(
        fd.as_raw_fd(),
        (&sin as *const libc::sockaddr_in).cast(),
        size_of::<libc::sockaddr_in>() as libc::socklen_t
    ))
    .map(drop)
}

/// `connect(2)` to an IPv4 address, blocking until it is established.
pub fn connect_v4(fd: BorrowedFd<'_>, remote: SocketAddrV4) -> io::Result<()> {
    let sin = sockaddr_v4(remote);
    // SAFETY: `sin` is a valid sockaddr_in of the length given.
    match syscall!(connect(
        fd.as_raw_fd(),
        (&sin as *const libc::sockaddr_in).cast(),
        size_of::<libc::sockaddr_in>() as libc::socklen_t
    )) {
        Ok(_) => Ok(()),
        // Interrupted, the connection still goes on in the background; its
        // result comes as the socket's error once it is writable.
        Err(e) if e.kind() == io::ErrorKind::Interrupted => wait_connected(fd),
        Err(e) => Err(e),
    }
}

/// Waits (`poll(2)`) for an interrupted connect to finish and returns its
/// result (`getsockopt(SO_ERROR)`).
fn wait_connected(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match super::poll_one(fd, libc::POLLOUT, None) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    match getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR)? {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// `setsockopt(TCP_NODELAY)`: send each write at once instead of waiting
/// to fill a segment (Nagle's algorithm).
pub fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt::<libc::c_int>(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn names_addresses() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = local_addr(tcp.as_fd()).unwrap();
        assert_eq!(addr, SockAddr::Inet(tcp.local_addr().unwrap()));
        let info = socket_info(tcp.as_fd()).unwrap();
        assert_eq!(
            (info.domain, info.kind, info.listening),
            (libc::AF_INET, libc::SOCK_STREAM, true)
        );

        let dir = std::env::temp_dir().join(format!("qc-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let unix = UnixListener::bind(&path).unwrap();
        assert_eq!(
            local_addr(unix.as_fd()).unwrap().to_string(),
            path.to_str().unwrap()
        );
        let client = UnixStream::connect(&path).unwrap();
        let (accepted, peer) = accept(unix.as_fd()).unwrap();
        assert_eq!(peer, SockAddr::UnixUnnamed);
        let cred = peer_cred(accepted.as_fd()).unwrap();
        assert_eq!(cred.pid, Pid::from(std::process::id()));
        assert!(!socket_info(client.as_fd()).unwrap().listening);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
