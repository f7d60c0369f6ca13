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

/// Sends `payload` from `socket` to `to` with IP TTL (IPv6 hop limit)
/// `ttl` on this one datagram (a control message to `sendmsg`), leaving
/// the socket's own TTL as it is.
///
/// # Errors
/// The send's error; [`io::ErrorKind::Unsupported`] off Linux.
pub(crate) fn send_with_ttl(
    socket: &std::net::UdpSocket,
    payload: &[u8],
    to: SocketAddr,
    ttl: u8,
) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
        use std::os::fd::AsRawFd;
        let hops = i32::from(ttl);
        let cmsg = match to {
            SocketAddr::V4(_) => ControlMessage::Ipv4Ttl(&hops),
            SocketAddr::V6(_) => ControlMessage::Ipv6HopLimit(&hops),
        };
        let addr = SockaddrStorage::from(to);
        sendmsg(
            socket.as_raw_fd(),
            &[io::IoSlice::new(payload)],
            &[cmsg],
            MsgFlags::empty(),
            Some(&addr),
        )
        .map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, payload, to, ttl);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Sends one TCP SYN from `local` (the punch port, with port reuse) to
/// `to` with IP TTL (IPv6 hop limit) `ttl`, for priming our NAT
/// ([`dcutr_core::Output::Prime`]): a socket of its own, whose TTL is set
/// before its non-blocking connect (Linux sends the SYN inside the
/// `connect` call), and which is closed at once, abortively (`SO_LINGER`
/// 0). Closing a socket in SYN-SENT sends nothing (no RST), and our NAT
/// keeps the conntrack entry the SYN created; an early SYN of the peer
/// then matches that entry and reaches our listener on the punch port.
/// Where the TTL does reach the peer (a peer on our own LAN, or on
/// loopback) its SYN-ACK may complete the handshake before the close:
/// the abortive close then resets that connection (the peer's identity
/// check drops it like any stranger) and leaves no TIME-WAIT on the
/// four-tuple. Closing at once rather than
/// after a while frees the four-tuple for the punch's own dial, which the
/// initiator makes only half a round trip later (well under a
/// millisecond on a LAN); the dial socket itself is not used because
/// its SYN must carry a full TTL, and its first retransmission comes only
/// after a second.
///
/// # Errors
/// Socket creation, option, bind or connect errors (not
/// the connect's "in progress").
pub(crate) fn prime_tcp(local: SocketAddr, to: SocketAddr, ttl: u8) -> io::Result<()> {
    if local.is_ipv4() != to.is_ipv4() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let socket = reuse_stream_socket(local)?;
    socket.set_linger(Some(std::time::Duration::ZERO))?;
    if to.is_ipv4() {
        socket.set_ttl_v4(u32::from(ttl))?;
    } else {
        socket.set_unicast_hops_v6(u32::from(ttl))?;
    }
    match socket.connect(&to.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        #[cfg(target_os = "linux")]
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => Ok(()),
        Err(e) => Err(e),
    }
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

    /// The TTL of the next datagram `socket` receives (`IP_RECVTTL`).
    #[cfg(target_os = "linux")]
    fn received_ttl(socket: &std::net::UdpSocket) -> i32 {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 128];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(i32);
        let msg = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let ttls: Vec<i32> = msg
            .cmsgs()
            .unwrap()
            .filter_map(|c| match c {
                ControlMessageOwned::Ipv4Ttl(ttl) => Some(ttl),
                _ => None,
            })
            .collect();
        assert_eq!(ttls.len(), 1, "{ttls:?}");
        ttls[0]
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_priming_datagram_carries_its_own_ttl_and_leaves_the_sockets_alone() {
        use nix::sys::socket::{setsockopt, sockopt::Ipv4RecvTtl};
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        setsockopt(&receiver, Ipv4RecvTtl, &true).unwrap();
        let to = receiver.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_ttl(64).unwrap();
        assert_eq!(send_with_ttl(&sender, b"prime", to, 2).unwrap(), 5);
        assert_eq!(received_ttl(&receiver), 2);
        // The socket's own TTL is untouched: the next plain send has it.
        assert_eq!(sender.ttl().unwrap(), 64);
        sender.send_to(b"quinn", to).unwrap();
        assert_eq!(received_ttl(&receiver), 64);
    }

    #[test]
    fn a_priming_syn_leaves_the_four_tuple_free_for_the_punch_dial() {
        // The peer's listener, and our punch port with its listener.
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = peer.local_addr().unwrap();
        let ours = reuse_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = ours.local_addr().unwrap();
        // On loopback the TTL does not stop the SYN: the handshake may
        // complete, and the abortive close must not leave TIME-WAIT.
        prime_tcp(local, to, 2).unwrap();
        let dial = reuse_stream_socket(local).unwrap();
        dial.set_nonblocking(false).unwrap();
        dial.connect_timeout(&to.into(), std::time::Duration::from_secs(5))
            .expect("the punch's own dial from the same port to the same peer");
        assert_eq!(dial.local_addr().unwrap().as_socket(), Some(local));
        assert!(prime_tcp(local, "[::1]:9".parse().unwrap(), 2).is_err());
    }
}
