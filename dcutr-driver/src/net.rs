//! Sockets with port reuse.
//!
//! A TCP hole punch only works if the dial leaves from the very port the
//! peer was told about: the port of our listener, whose NAT mapping the
//! relay observed. Listener and dials therefore all set `SO_REUSEADDR` and
//! `SO_REUSEPORT` and bind the same local address.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Most pending connections in the listen backlog: a punch yields a
/// handful of connections; more are strangers.
pub const LISTEN_BACKLOG: i32 = 64;

fn reuse_socket(addr: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A non-blocking TCP listener on `addr` with port reuse, ready to be
/// handed to a runtime.
///
/// # Errors
/// Socket creation, option or bind errors.
pub fn reuse_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = reuse_socket(addr, Type::STREAM, Protocol::TCP)?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// A non-blocking, unconnected TCP socket bound to `local` with port
/// reuse: connect it with the runtime's non-blocking connect.
///
/// # Errors
/// Socket creation, option or bind errors.
pub fn reuse_stream_socket(local: SocketAddr) -> io::Result<Socket> {
    reuse_socket(local, Type::STREAM, Protocol::TCP)
}

/// A non-blocking UDP socket on `addr` (no port reuse: one QUIC endpoint
/// owns the port, and spray datagrams go out through a clone of it).
///
/// # Errors
/// Socket creation or bind errors.
pub fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sockets_share_a_listening_port() {
        let listener = reuse_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // A dial socket on the same address binds fine thanks to reuse.
        let dial = reuse_stream_socket(addr).unwrap();
        assert_eq!(dial.local_addr().unwrap().as_socket(), Some(addr));
    }
}
