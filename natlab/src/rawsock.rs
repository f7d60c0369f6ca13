//! AF_PACKET raw sockets for the delay line. The only module with `unsafe`:
//! each block is one libc call on memory that this module owns.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `PACKET_IGNORE_OUTGOING` (Linux 4.20+): do not deliver our own transmitted
/// frames back to us. Spelled out because older libc crates lack it.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// `sll_pkttype` of a frame this host transmitted (`PACKET_OUTGOING`).
const PACKET_OUTGOING: u8 = 4;

/// Receive buffer we ask for: a 100 ms delay at line rate on a veth would need
/// far more, but the lab's traffic is small; this just absorbs bursts while a
/// receiver thread is descheduled on a 2-core machine.
const RECV_BUFFER_BYTES: libc::c_int = 4 * 1024 * 1024;

/// A raw socket bound to one interface, receiving every frame (promiscuous).
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
}

/// One received frame.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// The frame's real length (may exceed the buffer: then it was truncated).
    pub len: usize,
    /// Whether this is a copy of a frame transmitted on this interface.
    pub outgoing: bool,
}

fn check(ret: libc::c_int, what: &str, ifname: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what} on {ifname}: {e}")))
    } else {
        Ok(ret)
    }
}

impl PacketSocket {
    /// Open a socket on `ifname` for all protocols, in promiscuous mode, not
    /// looping back our own transmissions.
    pub fn open(ifname: &str) -> io::Result<Self> {
        let cname = CString::new(ifname)?;
        // SAFETY: `cname` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("no interface {ifname}: {e}"),
            ));
        }
        let proto_be = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscall with constant arguments.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto_be),
            )
        };
        let raw = check(raw, "socket(AF_PACKET)", ifname)?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = Self {
            fd,
            ifname: ifname.to_owned(),
        };

        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto_be;
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `sll` is a properly initialised sockaddr_ll of the given size.
        let ret = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(ret, "bind", ifname)?;

        // SAFETY: all-zero is a valid packet_mreq.
        let mut mreq: libc::packet_mreq = unsafe { zeroed() };
        mreq.mr_ifindex = ifindex as libc::c_int;
        mreq.mr_type = libc::PACKET_MR_PROMISC as libc::c_ushort;
        sock.setsockopt(
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq,
            "PACKET_ADD_MEMBERSHIP",
        )?;
        // Older kernels lack it; `recv` also filters on the packet type.
        let _ = sock.setsockopt(
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            &1i32,
            "PACKET_IGNORE_OUTGOING",
        );
        // Best effort: the default buffer is only a few hundred kB.
        let _ = sock.setsockopt(
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &RECV_BUFFER_BYTES,
            "SO_RCVBUFFORCE",
        );
        Ok(sock)
    }

    fn setsockopt<T>(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: &T,
        what: &str,
    ) -> io::Result<()> {
        // SAFETY: `value` points to a live `T` of exactly `size_of::<T>()` bytes.
        let ret = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        check(ret, what, &self.ifname).map(drop)
    }

    /// Block until a frame arrives; copy it into `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for writes of the lengths given;
        // MSG_TRUNC makes the kernel return the real frame length.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Received {
            len: n as usize,
            outgoing: from.sll_pkttype == PACKET_OUTGOING,
        })
    }

    /// Transmit one complete Ethernet frame on the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
