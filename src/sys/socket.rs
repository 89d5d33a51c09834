//! Socket calls: inspecting passed sockets, accepting, naming addresses, and
//! TCP connections from a chosen source address (bind before connect).

use std::fmt;
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::process::Pid;
use super::syscall;

/// A socket address of any family we serve, for logs and messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SockAddr {
    Inet(SocketAddr),
    /// A Unix socket path.
    UnixPath(Box<str>),
    /// A Unix socket in the abstract namespace, shown as `@name`.
    UnixAbstract(Box<str>),
    /// An unnamed Unix socket (most clients).
    UnixUnnamed,
    Vsock {
        cid: u32,
        port: u32,
    },
    Other(libc::sa_family_t),
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Inet(a) => a.fmt(f),
            SockAddr::UnixPath(p) => f.write_str(p),
            SockAddr::UnixAbstract(p) => write!(f, "@{p}"),
            SockAddr::UnixUnnamed => f.write_str("unix"),
            SockAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            SockAddr::Other(family) => write!(f, "address family {family}"),
        }
    }
}

/// Decodes the first `len` bytes of `storage` as a socket address.
fn decode(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> SockAddr {
    let len = len as usize;
    let ptr: *const libc::sockaddr_storage = storage;
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote an AF_INET address of at least this
            // size; sockaddr_storage is aligned for every sockaddr type.
            let sin = unsafe { &*ptr.cast::<libc::sockaddr_in>() };
            SockAddr::Inet(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for AF_INET6.
            let sin6 = unsafe { &*ptr.cast::<libc::sockaddr_in6>() };
            SockAddr::Inet(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        libc::AF_UNIX => {
            // SAFETY: as above, for AF_UNIX (any length up to the struct).
            let sun = unsafe { &*ptr.cast::<libc::sockaddr_un>() };
            let offset = size_of::<libc::sa_family_t>();
            let path_len = len.saturating_sub(offset).min(sun.sun_path.len());
            let path: Vec<u8> = sun.sun_path[..path_len].iter().map(|&c| c as u8).collect();
            match path.split_first() {
                None => SockAddr::UnixUnnamed,
                Some((0, name)) => {
                    SockAddr::UnixAbstract(String::from_utf8_lossy(name).into_owned().into())
                }
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    SockAddr::UnixPath(String::from_utf8_lossy(&path[..end]).into_owned().into())
                }
            }
        }
        libc::AF_VSOCK if len >= size_of::<libc::sockaddr_vm>() => {
            // SAFETY: as above, for AF_VSOCK.
            let svm = unsafe { &*ptr.cast::<libc::sockaddr_vm>() };
            SockAddr::Vsock {
                cid: svm.svm_cid,
                port: svm.svm_port,
            }
        }
        family => SockAddr::Other(family as libc::sa_family_t),
    }
}

/// `getsockname(2)`: the local address of a socket.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SockAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len describe a writable buffer of that size.
    syscall!(getsockname(
        fd.as_raw_fd(),
        storage.as_mut_ptr().cast(),
        &mut len
    ))?;
    // SAFETY: zeroed is a valid sockaddr_storage; the kernel wrote `len` bytes.
    Ok(decode(unsafe { storage.assume_init_ref() }, len))
}

fn sockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len describe a writable c_int.
    syscall!(getsockopt(
        fd.as_raw_fd(),
        level,
        name,
        (&mut value as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok(value)
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
        domain: sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        kind: sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
        listening: sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0,
    })
}

/// `accept4(SOCK_CLOEXEC)`: a new connection, blocking (children get it as
/// stdio), never inherited by anyone but the child it is given to.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, SockAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len describe a writable buffer of that size.
    let fd = syscall!(accept4(
        listener.as_raw_fd(),
        storage.as_mut_ptr().cast(),
        &mut len,
        libc::SOCK_CLOEXEC
    ))?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed is a valid sockaddr_storage; the kernel wrote `len` bytes.
    Ok((fd, decode(unsafe { storage.assume_init_ref() }, len)))
}

/// The process at the other end of a Unix socket (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Pid,
    pub uid: u32,
}

/// `getpeername(2)`: the remote address of a connected socket.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<SockAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len describe a writable buffer of that size.
    syscall!(getpeername(
        fd.as_raw_fd(),
        storage.as_mut_ptr().cast(),
        &mut len
    ))?;
    // SAFETY: zeroed is a valid sockaddr_storage; the kernel wrote `len` bytes.
    Ok(decode(unsafe { storage.assume_init_ref() }, len))
}

/// `getsockopt(SO_PEERCRED)`.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len describe a writable ucred.
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        (&mut cred as *mut libc::ucred).cast(),
        &mut len
    ))?;
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
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors socketpair returns.
    syscall!(socketpair(
        libc::AF_UNIX,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        0,
        fds.as_mut_ptr()
    ))?;
    // SAFETY: socketpair returned two new descriptors that nothing else owns.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let on: libc::c_int = 1;
    // SAFETY: `on` is a readable int of the size given.
    syscall!(setsockopt(
        ours.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_PASSCRED,
        (&on as *const libc::c_int).cast(),
        size_of::<libc::c_int>() as libc::socklen_t
    ))?;
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

/// `shutdown(2)` of one or both directions.
pub fn shutdown(fd: BorrowedFd<'_>, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    syscall!(shutdown(fd.as_raw_fd(), how)).map(drop)
}

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
    let fd = syscall!(socket(
        libc::AF_INET,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        0
    ))?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_sockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a readable c_int of the size given.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        level,
        name,
        (&value as *const libc::c_int).cast(),
        size_of::<libc::c_int>() as libc::socklen_t
    ))
    .map(drop)
}

/// `bind(2)` of a TCP socket to `local` with port 0, the port chosen by
/// the following `connect(2)` (`IP_BIND_ADDRESS_NO_PORT`, so that only the
/// whole four-tuple must be unique, not the source port).
pub fn bind_v4_for_connect(fd: BorrowedFd<'_>, local: Ipv4Addr) -> io::Result<()> {
    set_sockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
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

/// Waits (`poll(2)`) for an interrupted connect to finish and returns its result.
fn wait_connected(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd.
        match syscall!(poll(&mut pfd, 1, -1)) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    match sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)? {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// `setsockopt(TCP_NODELAY)`: send each write at once instead of waiting
/// to fill a segment (Nagle's algorithm).
pub fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_sockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
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
