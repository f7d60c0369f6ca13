//! A fake STUN server for the tests: answers Binding requests on a
//! loopback address with an XOR-MAPPED-ADDRESS built here byte by byte
//! (not with the client's codec), as told, or stays silent.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any fake server thread runs, whatever the test does.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(60);

/// STUN's magic cookie (RFC 8489 section 5).
pub const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// What a fake server received: (when, from, datagram).
pub type Received = Vec<(Instant, SocketAddr, Vec<u8>)>;

/// How a fake server answers.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// Never.
    Silent,
    /// With the request's source address: no NAT.
    Truthfully,
    /// With the source address, its port moved by this much: a NAT that
    /// maps each destination to a port of its own, when two servers use
    /// different offsets.
    PortOffset(u16),
}

/// A fake server on its own thread; see the module docs.
pub struct FakeServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Received>>,
}

impl FakeServer {
    pub fn start(ip: &str, answer: Answer) -> FakeServer {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut received = Vec::new();
            let mut buf = [0u8; 1500];
            while started.elapsed() < SERVER_LIFETIME {
                // Once stopped, drain what already arrived (a datagram
                // sent on loopback is queued by the time `send_to`
                // returns), then end at the first empty read.
                let stopping = stopped.load(Ordering::Relaxed);
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    if stopping {
                        break;
                    }
                    continue;
                };
                received.push((Instant::now(), from, buf[..n].to_vec()));
                let request = n >= 20 && buf[..2] == [0, 1] && buf[4..8] == COOKIE;
                let mapped = match answer {
                    Answer::Silent => None,
                    Answer::Truthfully => Some(from),
                    Answer::PortOffset(by) => {
                        Some(SocketAddr::new(from.ip(), from.port().wrapping_add(by)))
                    }
                };
                if let (true, Some(mapped)) = (request, mapped) {
                    let _ = socket.send_to(&success(&buf[..20], mapped), from);
                }
            }
            received
        });
        FakeServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Received {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A Binding success response to the request with `header`, with the
/// XOR-MAPPED-ADDRESS of `mapped` (IPv4) and nothing else.
pub fn success(header: &[u8], mapped: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = mapped else {
        panic!("IPv4 only")
    };
    let mut out = vec![0x01, 0x01, 0, 12];
    out.extend_from_slice(&header[4..20]);
    out.extend_from_slice(&[0x00, 0x20, 0, 8, 0, 1]);
    out.extend_from_slice(&(v4.port() ^ 0x2112).to_be_bytes());
    let ip = v4.ip().octets();
    out.extend((0..4).map(|i| ip[i] ^ COOKIE[i]));
    out
}
