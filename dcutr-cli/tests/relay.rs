//! The rendezvous relay end to end on loopback: the relay runs in-process on
//! an ephemeral port, clients are the library's client or raw sockets. No
//! test sleeps to wait for something: each waits for a protocol line or a
//! relay event.

use std::net::SocketAddr;
use std::time::Duration;

use dcutr_cli::relay::{self, RelayConfig, RelayEvent, RelayListener};
use dcutr_cli::rendezvous::{
    self, MAX_LINE_BYTES, Message, PairedSide, Registration, observe_udp, register,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// Bound on any single wait in these tests: far above what loopback needs,
/// so a hang fails the test instead of blocking the suite.
const STEP: Duration = Duration::from_secs(10);

/// A relay serving in this test's runtime; dropped with the runtime.
struct TestRelay {
    addr: SocketAddr,
    events: mpsc::Receiver<RelayEvent>,
}

impl TestRelay {
    async fn start() -> TestRelay {
        Self::with(RelayConfig::default()).await
    }

    async fn with(mut config: RelayConfig) -> TestRelay {
        let (tx, events) = mpsc::channel(1024);
        config.events = Some(tx);
        let listener = RelayListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Err(e) = relay::run(listener, config).await {
                panic!("relay failed: {e:#}");
            }
        });
        TestRelay { addr, events }
    }

    /// Wait for the first event matching `pred`, skipping others.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&RelayEvent) -> bool) -> RelayEvent {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(e) if pred(&e) => return e,
                    Some(_) => continue,
                    None => panic!("relay event channel closed"),
                }
            }
        };
        timeout(STEP, wait)
            .await
            .unwrap_or_else(|_| panic!("no relay event {what} within {STEP:?}"))
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A raw client speaking lines by hand.
struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(relay: SocketAddr) -> Raw {
        Raw {
            reader: BufReader::new(TcpStream::connect(relay).await.unwrap()),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).await.unwrap();
    }

    async fn send_msg(&mut self, msg: &Message) {
        let line = msg.to_line().unwrap();
        self.send(&line).await;
    }

    /// The next line as a message; `None` at end of stream.
    async fn recv(&mut self) -> Option<Message> {
        let mut line = String::new();
        let n = timeout(STEP, self.reader.read_line(&mut line))
            .await
            .expect("no line from the relay in time")
            .expect("read failed");
        if n == 0 {
            return None;
        }
        Some(Message::from_line(line.trim_end().as_bytes()).expect("relay sent a malformed line"))
    }

    async fn expect_error(&mut self) -> String {
        match self.recv().await {
            Some(Message::Error { reason }) => reason,
            other => panic!("expected an error line, got {other:?}"),
        }
    }

    /// After an error the relay closes: end of stream (a reset counts too).
    async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match timeout(STEP, self.reader.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => assert!(rest.is_empty(), "bytes after the error: {rest:?}"),
            Ok(Err(_)) => {}
            Err(_) => panic!("the relay did not close the connection"),
        }
    }
}

/// Register `name` with the given lists and wait for `registered`.
async fn ready(relay: SocketAddr, name: &str, addrs: &[&str], public: &[&str]) -> Registration {
    let mut reg = register(relay, name, None).await.unwrap();
    reg.ready(&strings(addrs), &strings(public)).await.unwrap();
    reg
}

/// A listener with SO_REUSEADDR and SO_REUSEPORT on an ephemeral loopback
/// port, as the punch listener of `dcutr peer` is bound.
fn reuse_listener() -> std::net::TcpListener {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.into()
}

#[tokio::test]
async fn hello_reports_the_source_address_and_tcp_from_keeps_the_punch_port() {
    let mut relay = TestRelay::start().await;

    // From the port of a live punch listener bound with the same options.
    let punch = reuse_listener();
    let punch_addr = punch.local_addr().unwrap();
    let reg = register(relay.addr, "b", Some(punch_addr)).await.unwrap();
    assert_eq!(reg.observed_tcp(), punch_addr);
    assert_eq!(reg.local_tcp(), punch_addr);
    assert_eq!(reg.name(), "b");
    let event = relay
        .wait_for("hello", |e| matches!(e, RelayEvent::Hello { .. }))
        .await;
    assert_eq!(
        event,
        RelayEvent::Hello {
            name: "b".into(),
            tcp: punch_addr
        }
    );

    // Without tcp_from: an ephemeral port, still observed as it is.
    let other = register(relay.addr, "c", None).await.unwrap();
    assert_eq!(other.observed_tcp(), other.local_tcp());
    assert_ne!(other.observed_tcp().port(), punch_addr.port());
}

#[tokio::test]
async fn udp_observe_reports_the_datagram_source() {
    let mut relay = TestRelay::start().await;
    let _reg = register(relay.addr, "b", None).await.unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let observed = observe_udp(&socket, relay.addr, "b").await.unwrap();
    assert_eq!(observed, socket.local_addr().unwrap());
    let event = relay
        .wait_for("udp observed", |e| {
            matches!(e, RelayEvent::UdpObserved { .. })
        })
        .await;
    assert_eq!(
        event,
        RelayEvent::UdpObserved {
            name: "b".into(),
            udp: observed
        }
    );

    // A raw datagram, padded, gets the documented answer, no longer than
    // itself.
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let request = rendezvous::observe_datagram("b").unwrap();
    assert_eq!(request.len(), rendezvous::OBSERVE_DATAGRAM_LEN);
    raw.send_to(&request, relay.addr).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = timeout(STEP, raw.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, relay.addr);
    assert!(n <= request.len());
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        format!(
            "{{\"type\":\"observed\",\"udp\":\"{}\"}}\n",
            raw.local_addr().unwrap()
        )
    );
}

#[tokio::test]
async fn connect_pairs_with_the_right_sides_and_addresses() {
    let mut relay = TestRelay::start().await;
    let b_addrs = [
        "/ip4/198.51.100.2/tcp/5000",
        "/ip4/198.51.100.2/udp/5000/quic-v1",
    ];
    let b_public = ["/ip4/198.51.100.2/tcp/5000"];
    let a_addrs = ["/ip4/203.0.113.7/tcp/5001"];
    let b = ready(relay.addr, "b", &b_addrs, &b_public).await;
    relay
        .wait_for("b registered", |e| {
            matches!(e, RelayEvent::Registered { .. })
        })
        .await;
    let b_waits = tokio::spawn(b.wait_paired());
    let a = ready(relay.addr, "a", &a_addrs, &[]).await;
    let a_paired = a.connect("b").await.unwrap();
    let b_paired = timeout(STEP, b_waits).await.unwrap().unwrap().unwrap();

    assert_eq!(a_paired.peer, "b");
    assert_eq!(a_paired.side, PairedSide::Responder);
    assert_eq!(a_paired.peer_addrs, strings(&b_addrs));
    assert_eq!(a_paired.peer_public, strings(&b_public));

    assert_eq!(b_paired.peer, "a");
    assert_eq!(b_paired.side, PairedSide::Initiator);
    assert_eq!(b_paired.peer_addrs, strings(&a_addrs));
    assert!(b_paired.peer_public.is_empty());

    let event = relay
        .wait_for("paired", |e| matches!(e, RelayEvent::Paired { .. }))
        .await;
    assert_eq!(
        event,
        RelayEvent::Paired {
            initiator: "b".into(),
            responder: "a".into()
        }
    );

    // Both names are free again once paired.
    let _b2 = register(relay.addr, "b", None).await.unwrap();
    let _a2 = register(relay.addr, "a", None).await.unwrap();
}

#[tokio::test]
async fn bytes_flow_both_ways_after_pairing_including_the_first_ones() {
    let relay = TestRelay::start().await;
    let b = ready(relay.addr, "b", &[], &[]).await;
    let b_side = tokio::spawn(async move {
        let mut paired = b.wait_paired().await.unwrap();
        // Written the moment `paired` arrives, before A even has its line.
        paired.stream.write_all(b"first from b").await.unwrap();
        let mut buf = [0u8; 12];
        paired.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first from a");
        // Echo a larger payload back.
        let mut big = vec![0u8; 200_000];
        paired.stream.read_exact(&mut big).await.unwrap();
        paired.stream.write_all(&big).await.unwrap();
        paired
    });
    let a = ready(relay.addr, "a", &[], &[]).await;
    let mut paired = a.connect("b").await.unwrap();
    paired.stream.write_all(b"first from a").await.unwrap();
    let mut buf = [0u8; 12];
    timeout(STEP, paired.stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"first from b");

    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    paired.stream.write_all(&big).await.unwrap();
    let mut back = vec![0u8; big.len()];
    timeout(STEP, paired.stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back == big, "the echoed payload differs");
    timeout(STEP, b_side).await.unwrap().unwrap();
}

#[tokio::test]
async fn bytes_pipelined_after_connect_are_forwarded() {
    let relay = TestRelay::start().await;
    let b = ready(relay.addr, "b", &["/ip4/1.2.3.4/tcp/1"], &[]).await;
    let b_waits = tokio::spawn(b.wait_paired());

    // A raw A that writes its connect line and raw bytes in one segment.
    let mut a = Raw::connect(relay.addr).await;
    a.send_msg(&Message::Hello { name: "a".into() }).await;
    assert!(matches!(
        a.recv().await,
        Some(Message::Observed { tcp: Some(_), .. })
    ));
    let mut burst = Message::Connect { peer: "b".into() }.to_line().unwrap();
    burst.extend_from_slice(b"early bytes");
    a.send(&burst).await;
    match a.recv().await {
        Some(Message::Paired {
            peer,
            side,
            peer_addrs,
            ..
        }) => {
            assert_eq!(peer, "b");
            assert_eq!(side, PairedSide::Responder);
            assert_eq!(peer_addrs, strings(&["/ip4/1.2.3.4/tcp/1"]));
        }
        other => panic!("expected paired, got {other:?}"),
    }
    let mut b_paired = timeout(STEP, b_waits).await.unwrap().unwrap().unwrap();
    // A connected without `ready`: B learns no addresses for it.
    assert!(b_paired.peer_addrs.is_empty() && b_paired.peer_public.is_empty());
    let mut buf = [0u8; 11];
    timeout(STEP, b_paired.stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"early bytes");
}

#[tokio::test]
async fn the_client_keeps_bytes_that_arrive_with_the_paired_line() {
    // A fake relay that sends `paired` and raw bytes in one write.
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, peer) = fake.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap(); // hello
        let mut out = Message::Observed {
            tcp: Some(peer),
            udp: None,
        }
        .to_line()
        .unwrap();
        stream.get_mut().write_all(&out).await.unwrap();
        line.clear();
        stream.read_line(&mut line).await.unwrap(); // ready
        assert!(line.contains("\"ready\""), "{line}");
        out = Message::Registered.to_line().unwrap();
        out.extend(
            Message::Paired {
                peer: "a".into(),
                side: PairedSide::Initiator,
                peer_public: vec![],
                peer_addrs: vec![],
            }
            .to_line()
            .unwrap(),
        );
        out.extend_from_slice(b"raw after paired\n{\"type\":\"not a message\"}");
        stream.get_mut().write_all(&out).await.unwrap();
        stream
    });
    let mut reg = register(addr, "b", None).await.unwrap();
    reg.ready(&[], &[]).await.unwrap();
    let mut paired = reg.wait_paired().await.unwrap();
    assert_eq!(paired.side, PairedSide::Initiator);
    let mut raw = Vec::new();
    let _server = server.await.unwrap();
    let expected = b"raw after paired\n{\"type\":\"not a message\"}";
    raw.resize(expected.len(), 0);
    timeout(STEP, paired.stream.read_exact(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], &expected[..]);
}

#[tokio::test]
async fn delay_ms_holds_each_chunk_one_way() {
    let relay = TestRelay::with(RelayConfig {
        delay: Duration::from_millis(50),
        ..RelayConfig::default()
    })
    .await;
    let b = ready(relay.addr, "b", &[], &[]).await;
    let echo = tokio::spawn(async move {
        let mut paired = b.wait_paired().await.unwrap();
        let mut buf = [0u8; 4];
        for _ in 0..2 {
            paired.stream.read_exact(&mut buf).await.unwrap();
            paired.stream.write_all(&buf).await.unwrap();
        }
    });
    let a = ready(relay.addr, "a", &[], &[]).await;
    let mut paired = a.connect("b").await.unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        paired.stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        timeout(STEP, paired.stream.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let rtt = started.elapsed();
        assert_eq!(&buf, b"ping");
        assert!(
            rtt >= Duration::from_millis(100),
            "round trip {rtt:?} < 100 ms"
        );
        assert!(rtt < Duration::from_secs(2), "round trip {rtt:?} too long");
    }
    timeout(STEP, echo).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_closing_peer_closes_the_splice_after_its_data() {
    let mut relay = TestRelay::with(RelayConfig {
        delay: Duration::from_millis(20),
        ..RelayConfig::default()
    })
    .await;
    let b = ready(relay.addr, "b", &[], &[]).await;
    let b_waits = tokio::spawn(b.wait_paired());
    let a = ready(relay.addr, "a", &[], &[]).await;
    let mut a_paired = a.connect("b").await.unwrap();
    let mut b_paired = timeout(STEP, b_waits).await.unwrap().unwrap().unwrap();

    a_paired.stream.write_all(b"last words").await.unwrap();
    drop(a_paired);
    let mut got = Vec::new();
    timeout(STEP, b_paired.stream.read_to_end(&mut got))
        .await
        .expect("B's side was not closed")
        .unwrap();
    assert_eq!(got, b"last words");
    drop(b_paired);
    let closed = relay
        .wait_for("splice closed", |e| {
            matches!(e, RelayEvent::SpliceClosed { .. })
        })
        .await;
    assert_eq!(
        closed,
        RelayEvent::SpliceClosed {
            initiator: "b".into(),
            responder: "a".into(),
            to_initiator: 10,
            to_responder: 0
        }
    );
}

#[tokio::test]
async fn a_duplicate_name_is_refused() {
    let relay = TestRelay::start().await;
    let _first = register(relay.addr, "b", None).await.unwrap();
    let err = register(relay.addr, "b", None).await.unwrap_err();
    assert!(format!("{err:#}").contains("already taken"), "{err:#}");
}

#[tokio::test]
async fn an_unknown_peer_is_refused_after_the_wait() {
    let relay = TestRelay::with(RelayConfig {
        connect_wait: Duration::from_millis(200),
        ..RelayConfig::default()
    })
    .await;
    let a = ready(relay.addr, "a", &[], &[]).await;
    let started = Instant::now();
    let err = a.connect("nobody").await.unwrap_err();
    assert!(format!("{err:#}").contains("not registered"), "{err:#}");
    assert!(started.elapsed() >= Duration::from_millis(200));

    let self_connect = ready(relay.addr, "me", &[], &[]).await;
    let err = self_connect.connect("me").await.unwrap_err();
    assert!(format!("{err:#}").contains("yourself"), "{err:#}");
}

#[tokio::test]
async fn a_connect_waits_for_a_peer_that_registers_late() {
    let mut relay = TestRelay::start().await;
    let a = ready(relay.addr, "a", &["/ip4/1.1.1.1/tcp/1"], &[]).await;
    let a_connects = tokio::spawn(a.connect("late"));
    relay
        .wait_for("a waits", |e| {
            matches!(e, RelayEvent::WaitingForPeer { .. })
        })
        .await;
    let late = ready(relay.addr, "late", &["/ip4/2.2.2.2/tcp/2"], &[]).await;
    let late_paired = late.wait_paired().await.unwrap();
    let a_paired = timeout(STEP, a_connects).await.unwrap().unwrap().unwrap();
    assert_eq!(
        (a_paired.side, late_paired.side),
        (PairedSide::Responder, PairedSide::Initiator)
    );
    assert_eq!(a_paired.peer_addrs, strings(&["/ip4/2.2.2.2/tcp/2"]));
    assert_eq!(late_paired.peer_addrs, strings(&["/ip4/1.1.1.1/tcp/1"]));
}

#[tokio::test]
async fn an_oversize_line_is_refused() {
    let relay = TestRelay::start().await;
    let mut raw = Raw::connect(relay.addr).await;
    raw.send(&vec![b'x'; MAX_LINE_BYTES + 100]).await;
    let reason = raw.expect_error().await;
    assert!(reason.contains("longer than"), "{reason}");
    raw.expect_closed().await;

    // A line of exactly the limit is read (and refused only as JSON).
    let mut raw = Raw::connect(relay.addr).await;
    let mut line = vec![b' '; MAX_LINE_BYTES];
    line[0] = b'{';
    line[MAX_LINE_BYTES - 1] = b'}';
    line.push(b'\n');
    raw.send(&line).await;
    let reason = raw.expect_error().await;
    assert!(reason.contains("malformed"), "{reason}");
}

#[tokio::test]
async fn unknown_types_and_out_of_order_messages_are_refused() {
    let relay = TestRelay::start().await;
    let mut raw = Raw::connect(relay.addr).await;
    raw.send(b"{\"type\":\"bogus\"}\n").await;
    let reason = raw.expect_error().await;
    assert!(reason.contains("bogus"), "{reason}");
    raw.expect_closed().await;

    let mut raw = Raw::connect(relay.addr).await;
    raw.send(b"{\"type\":\"ready\",\"addrs\":[],\"public\":[]}\n")
        .await;
    let reason = raw.expect_error().await;
    assert!(reason.contains("expected hello"), "{reason}");

    let mut raw = Raw::connect(relay.addr).await;
    raw.send(b"{\"type\":\"hello\",\"name\":\"bad name\"}\n")
        .await;
    let reason = raw.expect_error().await;
    assert!(reason.contains("name"), "{reason}");

    let mut raw = Raw::connect(relay.addr).await;
    raw.send_msg(&Message::Hello { name: "h".into() }).await;
    assert!(matches!(raw.recv().await, Some(Message::Observed { .. })));
    raw.send_msg(&Message::Hello { name: "h".into() }).await;
    let reason = raw.expect_error().await;
    assert!(reason.contains("unexpected hello"), "{reason}");
}

#[tokio::test]
async fn the_relay_survives_clients_that_vanish_mid_protocol() {
    let mut relay = TestRelay::with(RelayConfig {
        connect_wait: Duration::from_secs(30),
        ..RelayConfig::default()
    })
    .await;

    // Half a line, then gone.
    let mut raw = Raw::connect(relay.addr).await;
    raw.send(b"{\"type\":\"hel").await;
    drop(raw);

    // Registered and waiting, then gone: its name is free again.
    let b = ready(relay.addr, "b", &[], &[]).await;
    drop(b);
    relay
        .wait_for("b left", |e| e == &RelayEvent::Left { name: "b".into() })
        .await;

    // Asking for a peer that is not there, then gone mid-wait.
    let mut raw = Raw::connect(relay.addr).await;
    raw.send_msg(&Message::Hello { name: "x".into() }).await;
    assert!(matches!(raw.recv().await, Some(Message::Observed { .. })));
    raw.send_msg(&Message::Connect {
        peer: "ghost".into(),
    })
    .await;
    relay
        .wait_for("x waits", |e| {
            matches!(e, RelayEvent::WaitingForPeer { .. })
        })
        .await;
    drop(raw);

    // A pairing still works, with the name b reused.
    let b = ready(relay.addr, "b", &[], &[]).await;
    let b_waits = tokio::spawn(b.wait_paired());
    let a = ready(relay.addr, "a", &[], &[]).await;
    let mut a_paired = a.connect("b").await.unwrap();
    let mut b_paired = timeout(STEP, b_waits).await.unwrap().unwrap().unwrap();
    a_paired.stream.write_all(b"ok").await.unwrap();
    let mut buf = [0u8; 2];
    timeout(STEP, b_paired.stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ok");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused() {
    let relay = TestRelay::with(RelayConfig {
        max_connections: 2,
        ..RelayConfig::default()
    })
    .await;
    let _one = register(relay.addr, "one", None).await.unwrap();
    let _two = register(relay.addr, "two", None).await.unwrap();
    let err = register(relay.addr, "three", None).await.unwrap_err();
    assert!(format!("{err:#}").contains("relay full"), "{err:#}");
}

#[tokio::test]
async fn ready_with_lists_too_long_for_paired_is_refused() {
    let relay = TestRelay::start().await;
    let mut raw = Raw::connect(relay.addr).await;
    raw.send_msg(&Message::Hello { name: "b".into() }).await;
    assert!(matches!(raw.recv().await, Some(Message::Observed { .. })));
    // Fits in a ready line, but not in the paired line built from it.
    let addr = "x".repeat(MAX_LINE_BYTES - 60);
    let ready = Message::Ready {
        addrs: vec![addr],
        public: vec![],
    };
    raw.send_msg(&ready).await;
    let reason = raw.expect_error().await;
    assert!(reason.contains("too long"), "{reason}");
    // The client checks the same before sending.
    let mut reg = register(relay.addr, "c", None).await.unwrap();
    let err = reg
        .ready(&["x".repeat(MAX_LINE_BYTES - 60)], &[])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("too long"), "{err:#}");
}

#[test]
fn the_binary_prints_the_listening_line_and_serves() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_dcutr"))
        .args(["relay", "--listen", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the child whatever happens below.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let _guard = Kill(child);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["event"], "listening", "{line}");
    let addr: SocketAddr = value["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);

    // The printed address works for TCP and UDP, and events follow as JSON.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reg = register(addr, "b", None).await.unwrap();
        assert_eq!(reg.observed_tcp(), reg.local_tcp());
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let observed = rendezvous::observe_udp(&udp, addr, "b").await.unwrap();
        assert_eq!(observed, udp.local_addr().unwrap());
    });
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["event"], "hello", "{line}");
    assert_eq!(value["name"], "b", "{line}");
}

#[tokio::test]
async fn idle_and_unpaired_connections_are_closed_by_their_timeouts() {
    let relay = TestRelay::with(RelayConfig {
        control_idle: Duration::from_millis(100),
        pair_wait: Duration::from_millis(200),
        ..RelayConfig::default()
    })
    .await;
    let mut silent = Raw::connect(relay.addr).await;
    let reason = silent.expect_error().await;
    assert!(reason.contains("no hello within"), "{reason}");
    silent.expect_closed().await;

    let mut after_hello = Raw::connect(relay.addr).await;
    after_hello
        .send_msg(&Message::Hello { name: "h".into() })
        .await;
    assert!(matches!(
        after_hello.recv().await,
        Some(Message::Observed { .. })
    ));
    let reason = after_hello.expect_error().await;
    assert!(reason.contains("no message within"), "{reason}");

    let started = Instant::now();
    let b = ready(relay.addr, "b", &[], &[]).await;
    let err = b.wait_paired().await.unwrap_err();
    assert!(format!("{err:#}").contains("nobody connected"), "{err:#}");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_half_closed_stream_still_carries_the_reply() {
    let relay = TestRelay::start().await;
    let b = ready(relay.addr, "b", &[], &[]).await;
    let b_side = tokio::spawn(async move {
        let mut paired = b.wait_paired().await.unwrap();
        let mut request = Vec::new();
        paired.stream.read_to_end(&mut request).await.unwrap();
        paired.stream.write_all(b"reply to ").await.unwrap();
        paired.stream.write_all(&request).await.unwrap();
    });
    let a = ready(relay.addr, "a", &[], &[]).await;
    let mut paired = a.connect("b").await.unwrap();
    paired.stream.write_all(b"request").await.unwrap();
    paired.stream.get_mut().shutdown().await.unwrap();
    let mut reply = Vec::new();
    timeout(STEP, paired.stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"reply to request");
    timeout(STEP, b_side).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_dual_stack_relay_reports_ipv4_peers_as_ipv4() {
    let listener = match RelayListener::bind("[::]:0".parse().unwrap()).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: no IPv6 here ({e:#})");
            return;
        }
    };
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(relay::run(listener, RelayConfig::default()));
    let relay: SocketAddr = ([127, 0, 0, 1], port).into();
    let reg = match register(relay, "b", None).await {
        Ok(reg) => reg,
        Err(e) => {
            eprintln!("skipped: the [::] socket is IPv6-only here ({e:#})");
            return;
        }
    };
    assert!(reg.observed_tcp().is_ipv4(), "{}", reg.observed_tcp());
    assert_eq!(reg.observed_tcp(), reg.local_tcp());
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let observed = observe_udp(&udp, relay, "b").await.unwrap();
    assert_eq!(observed, udp.local_addr().unwrap());
}

/// Reads until the relay closes the stream; a reset counts as closed too
/// (the relay may close with our unread bytes in its buffer). Fails the
/// test if the stream stays open.
async fn read_until_closed(stream: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    timeout(STEP, read_all)
        .await
        .expect("the relay did not close the stream");
    got
}

#[tokio::test]
async fn cut_after_bytes_closes_both_sides_once_the_budget_is_forwarded() {
    let mut relay = TestRelay::with(RelayConfig {
        cut_after_bytes: Some(15),
        ..RelayConfig::default()
    })
    .await;
    let b = ready(relay.addr, "b", &[], &[]).await;
    let b_waits = tokio::spawn(b.wait_paired());
    let a = ready(relay.addr, "a", &[], &[]).await;
    let mut a_paired = a.connect("b").await.unwrap();
    let mut b_paired = timeout(STEP, b_waits).await.unwrap().unwrap().unwrap();

    // 10 bytes B -> A fit the budget of 15 and arrive whole.
    b_paired.stream.write_all(b"0123456789").await.unwrap();
    let mut buf = [0u8; 10];
    timeout(STEP, a_paired.stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"0123456789");
    // 10 bytes A -> B: only the 5 left in the budget are forwarded, then
    // both connections close.
    a_paired.stream.write_all(b"abcdefghij").await.unwrap();
    assert_eq!(read_until_closed(&mut b_paired.stream).await, b"abcde");
    assert_eq!(read_until_closed(&mut a_paired.stream).await, b"");
    let closed = relay
        .wait_for("splice closed", |e| {
            matches!(e, RelayEvent::SpliceClosed { .. })
        })
        .await;
    assert_eq!(
        closed,
        RelayEvent::SpliceClosed {
            initiator: "b".into(),
            responder: "a".into(),
            to_initiator: 5,
            to_responder: 10
        }
    );
}

#[tokio::test]
async fn cut_after_zero_bytes_closes_right_after_pairing_and_the_relay_goes_on() {
    let mut relay = TestRelay::with(RelayConfig {
        cut_after_bytes: Some(0),
        ..RelayConfig::default()
    })
    .await;
    for round in 0..2 {
        let b = ready(relay.addr, "b", &[], &[]).await;
        let b_waits = tokio::spawn(b.wait_paired());
        let a = ready(relay.addr, "a", &[], &[]).await;
        let mut a_paired = a.connect("b").await.unwrap();
        let mut b_paired = timeout(STEP, b_waits).await.unwrap().unwrap().unwrap();
        // Bytes B sends are not forwarded; both ends see the close.
        let _ = b_paired.stream.write_all(b"lost").await;
        assert_eq!(
            read_until_closed(&mut a_paired.stream).await,
            b"",
            "round {round}"
        );
        assert_eq!(
            read_until_closed(&mut b_paired.stream).await,
            b"",
            "round {round}"
        );
        let closed = relay
            .wait_for("splice closed", |e| {
                matches!(e, RelayEvent::SpliceClosed { .. })
            })
            .await;
        assert!(
            matches!(
                closed,
                RelayEvent::SpliceClosed {
                    to_initiator: 0,
                    to_responder: 0,
                    ..
                }
            ),
            "{closed:?}"
        );
    }
}

#[test]
fn the_binary_offers_no_lab_fixture() {
    // The cut, the delay and the runtime switch are natlab's lab-dcutr.
    for (command, fixtures) in [
        ("relay", &["--cut-after-bytes", "--delay-ms"][..]),
        ("peer", &["--runtime", "--name"][..]),
        ("demo", &["--runtime"][..]),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dcutr"))
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--json") || command == "demo", "{help}");
        for fixture in fixtures {
            assert!(!help.contains(fixture), "{command}: {fixture}\n{help}");
        }
    }
}

/// A raw client leaving from `ip` (any address of 127.0.0.0/8 is this
/// host's loopback), so one test can play several source addresses.
async fn raw_from(relay: SocketAddr, ip: &str) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .unwrap();
    Raw {
        reader: BufReader::new(socket.connect(relay).await.unwrap()),
    }
}

/// Connections one flooding address opens: far more than its cap.
const FLOOD_CONNECTIONS: usize = 200;

/// `dcutr relay` under a flood from one address: it gets its per-IP share
/// of connections and pairings, no more, and a pair from elsewhere still
/// meets and talks.
#[tokio::test]
async fn a_flood_from_one_address_stays_within_its_caps_and_pairs_still_meet() {
    let relay = TestRelay::start().await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..FLOOD_CONNECTIONS {
        let mut raw = raw_from(relay.addr, "127.0.0.2").await;
        raw.send_msg(&Message::Hello {
            name: format!("f{i}"),
        })
        .await;
        match raw.recv().await {
            Some(Message::Observed { .. }) => accepted.push(raw),
            Some(Message::Error { reason }) => {
                assert!(reason.contains("too many connections"), "{reason}");
                refused += 1;
            }
            // Refusals beyond the ones answered are just closed.
            None => refused += 1,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), relay::MAX_CONNECTIONS_PER_IP);
    assert_eq!(refused, FLOOD_CONNECTIONS - relay::MAX_CONNECTIONS_PER_IP);

    // The accepted half waits, the other half asks for it: self-made pairs.
    let half = accepted.len() / 2;
    for raw in &mut accepted[..half] {
        raw.send_msg(&Message::Ready {
            addrs: vec![],
            public: vec![],
        })
        .await;
        assert_eq!(raw.recv().await, Some(Message::Registered));
    }
    let mut paired = 0;
    let mut pairing_refused = 0;
    for (i, raw) in accepted[half..].iter_mut().enumerate() {
        raw.send_msg(&Message::Connect {
            peer: format!("f{i}"),
        })
        .await;
        match raw.recv().await {
            Some(Message::Paired { .. }) => paired += 1,
            Some(Message::Error { reason }) => {
                assert!(reason.contains("too many relayed streams"), "{reason}");
                pairing_refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(paired, relay::MAX_PAIRINGS_PER_IP);
    assert_eq!(pairing_refused, half - relay::MAX_PAIRINGS_PER_IP);

    // While the flood holds all it may, a pair from elsewhere meets.
    let b = register(relay.addr, "b", Some("127.0.0.3:0".parse().unwrap()))
        .await
        .unwrap();
    let mut b = b;
    b.ready(&[], &[]).await.unwrap();
    let b_waits = tokio::spawn(b.wait_paired());
    let mut a = register(relay.addr, "a", Some("127.0.0.4:0".parse().unwrap()))
        .await
        .unwrap();
    a.ready(&[], &[]).await.unwrap();
    let mut a_paired = a.connect("b").await.unwrap();
    let mut b_paired = timeout(STEP, b_waits).await.unwrap().unwrap().unwrap();
    a_paired.stream.write_all(b"legit").await.unwrap();
    let mut buf = [0u8; 5];
    timeout(STEP, b_paired.stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"legit");
    drop(accepted);
}

#[tokio::test]
async fn an_idle_splice_is_closed_and_a_busy_one_is_not() {
    const IDLE: Duration = Duration::from_millis(300);
    let mut relay = TestRelay::with(RelayConfig {
        splice_idle: IDLE,
        ..RelayConfig::default()
    })
    .await;
    let b = ready(relay.addr, "b", &[], &[]).await;
    let b_waits = tokio::spawn(b.wait_paired());
    let a = ready(relay.addr, "a", &[], &[]).await;
    let mut a_paired = a.connect("b").await.unwrap();
    let mut b_paired = timeout(STEP, b_waits).await.unwrap().unwrap().unwrap();

    // Busy for three idle periods: a byte every third of one.
    let busy_until = Instant::now() + 3 * IDLE;
    let mut sent = 0u64;
    let mut last_write = Instant::now();
    while Instant::now() < busy_until {
        a_paired.stream.write_all(b"x").await.unwrap();
        last_write = Instant::now();
        let mut byte = [0u8; 1];
        timeout(STEP, b_paired.stream.read_exact(&mut byte))
            .await
            .unwrap()
            .expect("the busy splice carries on");
        sent += 1;
        tokio::time::sleep(IDLE / 3).await;
    }
    assert!(sent >= 3);

    // Then silent: closed after one idle period.
    let closed = relay
        .wait_for("the idle splice closes", |e| {
            matches!(e, RelayEvent::SpliceClosed { .. })
        })
        .await;
    assert!(last_write.elapsed() >= IDLE, "closed before it was idle");
    assert_eq!(
        closed,
        RelayEvent::SpliceClosed {
            initiator: "b".into(),
            responder: "a".into(),
            to_initiator: sent,
            to_responder: 0,
        }
    );
    let mut rest = Vec::new();
    let _ = timeout(STEP, b_paired.stream.read_to_end(&mut rest))
        .await
        .expect("the relay closed the idle splice");
    assert!(rest.is_empty());
}

/// How long a test waits to see that the relay does not answer a datagram
/// (it answers a valid one on loopback within a millisecond).
const NO_ANSWER_WAIT: Duration = Duration::from_millis(300);

/// Datagrams from `socket` that arrive within [`NO_ANSWER_WAIT`] of each
/// other, until none does.
async fn answers(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(Ok((n, _))) = timeout(NO_ANSWER_WAIT, socket.recv_from(&mut buf)).await {
        got.push(buf[..n].to_vec());
        assert!(got.len() <= 1000, "bounded");
    }
    got
}

#[tokio::test]
async fn the_udp_port_answers_only_live_names_never_with_more_bytes_and_not_forever() {
    let relay = TestRelay::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // Nobody holds the name: no answer, not even an error.
    let padded = rendezvous::observe_datagram("ghost").unwrap();
    socket.send_to(&padded, relay.addr).await.unwrap();
    // Garbage and other types: no answer either.
    socket.send_to(b"garbage", relay.addr).await.unwrap();
    let hello = Message::Hello { name: "b".into() }.to_line().unwrap();
    socket.send_to(&hello, relay.addr).await.unwrap();
    assert!(answers(&socket).await.is_empty());

    // A live name, but a datagram shorter than its answer: no answer.
    let _b = register(relay.addr, "b", None).await.unwrap();
    let short = Message::Observe { name: "b".into() }.to_line().unwrap();
    socket.send_to(&short, relay.addr).await.unwrap();
    assert!(answers(&socket).await.is_empty());

    // Padded: answered, each answer no larger than its request, and no more
    // than the per-name budget however often it is asked.
    let request = rendezvous::observe_datagram("b").unwrap();
    let asked = relay::UDP_ANSWERS_PER_NAME as usize + 10;
    for _ in 0..asked {
        socket.send_to(&request, relay.addr).await.unwrap();
    }
    let got = answers(&socket).await;
    assert_eq!(got.len(), relay::UDP_ANSWERS_PER_NAME as usize);
    let answered_bytes: usize = got.iter().map(Vec::len).sum();
    assert!(got.iter().all(|a| a.len() <= request.len()));
    assert!(answered_bytes <= got.len() * request.len());
}
