//! Socket addresses as the kernel writes them (`sockaddr_storage`, see
//! unix(7), ip(7), ipv6(7), vsock(7)), decoded into one type for logs and
//! messages.

use std::fmt;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

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
pub(super) fn decode(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> SockAddr {
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
