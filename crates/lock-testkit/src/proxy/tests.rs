//! Tests of the fault proxy against a tiny echo server on 127.0.0.1.

use super::*;
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;

/// An echo server that reports every chunk it receives and can push data to all clients.
struct EchoServer {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<Vec<u8>>,
    push: broadcast::Sender<Vec<u8>>,
    accepted: Arc<AtomicU64>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        let (push, _) = broadcast::channel(16);
        let accepted = Arc::new(AtomicU64::new(0));
        let (push2, accepted2) = (push.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted2.fetch_add(1, Ordering::SeqCst);
                let (tx, mut pushed) = (tx.clone(), push2.subscribe());
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.into_split();
                    let mut buf = vec![0u8; 4096];
                    loop {
                        tokio::select! {
                            read = r.read(&mut buf) => match read {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    let _ = tx.send(buf[..n].to_vec());
                                    if w.write_all(&buf[..n]).await.is_err() { return }
                                }
                            },
                            Ok(data) = pushed.recv() => {
                                let data: Vec<u8> = data;
                                if w.write_all(&data).await.is_err() { return }
                            }
                        }
                    }
                });
            }
        });
        EchoServer { addr, received, push, accepted }
    }

    /// The next chunk the server received (fails after 5 s).
    async fn next(&mut self) -> Vec<u8> {
        timeout(Duration::from_secs(5), self.received.recv())
            .await
            .expect("server received nothing within 5 s")
            .expect("server gone")
    }

    /// Asserts that the server receives nothing for `d`.
    async fn nothing_for(&mut self, d: Duration) {
        if let Ok(Some(got)) = timeout(d, self.received.recv()).await {
            panic!("server unexpectedly received {:?}", String::from_utf8_lossy(&got));
        }
    }
}

async fn client(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr()).await.unwrap()
}

/// Reads exactly `n` bytes, failing after 5 s.
async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.expect("no answer within 5 s").unwrap();
    buf
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    assert_eq!(read_n(s, msg.len()).await, msg);
}

/// Asserts the stream ends (EOF or reset) within 5 s without delivering any data.
async fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("connection still open after 5 s") {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected a closed connection, got {:?}", String::from_utf8_lossy(&buf[..n])),
    }
}

/// Asserts nothing arrives on `s` for `d` (and the connection stays open).
async fn assert_silent(s: &mut TcpStream, d: Duration) {
    let mut buf = [0u8; 64];
    if let Ok(read) = timeout(d, s.read(&mut buf)).await {
        panic!("expected silence, got {read:?}");
    }
}

async fn wait_connections(proxy: &FaultProxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.connections() != n {
        assert!(Instant::now() < deadline, "{} connections open, expected {n}", proxy.connections());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn passes_traffic_through() {
    let mut server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    assert_eq!(proxy.addr().ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(proxy.port(), proxy.addr().port());
    let mut c = client(&proxy).await;
    round_trip(&mut c, b"hello").await;
    assert_eq!(server.next().await, b"hello");
    server.push.send(b"unasked".to_vec()).unwrap();
    assert_eq!(read_n(&mut c, 7).await, b"unasked");
    assert_eq!(proxy.connections(), 1);
    drop(c);
    wait_connections(&proxy, 0).await;
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut c = client(&proxy).await;
    let d = Duration::from_millis(150);
    proxy.latency(Direction::ToServer, d);
    let start = Instant::now();
    round_trip(&mut c, b"one").await;
    assert!(start.elapsed() >= d, "round trip took {:?}", start.elapsed());
    proxy.latency(Direction::Both, d);
    let start = Instant::now();
    // Several chunks in a row keep their order.
    for msg in [&b"a1"[..], b"b2", b"c3"] {
        c.write_all(msg).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(read_n(&mut c, 6).await, b"a1b2c3");
    assert!(start.elapsed() >= 2 * d, "round trip took {:?}", start.elapsed());
}

#[tokio::test]
async fn blackhole_to_client_loses_answers_but_server_still_receives() {
    let mut server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut c = client(&proxy).await;
    proxy.blackhole(Direction::ToClient);
    c.write_all(b"ping").await.unwrap();
    assert_eq!(server.next().await, b"ping");
    assert_silent(&mut c, Duration::from_millis(300)).await;
    // Healing resumes new traffic on the same connection; the swallowed answer stays lost.
    proxy.heal();
    round_trip(&mut c, b"pong").await;
    assert_eq!(server.next().await, b"pong");
}

#[tokio::test]
async fn blackhole_to_server_keeps_the_other_direction_flowing() {
    let mut server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut c = client(&proxy).await;
    round_trip(&mut c, b"warm").await;
    assert_eq!(server.next().await, b"warm");
    proxy.blackhole(Direction::ToServer);
    c.write_all(b"lost").await.unwrap();
    server.nothing_for(Duration::from_millis(300)).await;
    server.push.send(b"hi".to_vec()).unwrap();
    assert_eq!(read_n(&mut c, 2).await, b"hi");
    assert_eq!(proxy.connections(), 1);
    proxy.heal();
    round_trip(&mut c, b"next").await;
    assert_eq!(server.next().await, b"next", "data sent into the blackhole was delivered after heal");
}

#[tokio::test]
async fn drop_next_answer_applies_the_request_but_loses_the_answer() {
    let mut server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut bystander = client(&proxy).await;
    round_trip(&mut bystander, b"idle").await;
    assert_eq!(server.next().await, b"idle");
    let mut c = client(&proxy).await;
    wait_connections(&proxy, 2).await;
    proxy.drop_next_answer();
    assert_eq!(proxy.answers_dropped(), 0);
    c.write_all(b"request").await.unwrap();
    assert_eq!(server.next().await, b"request");
    assert_closed(&mut c).await;
    assert_eq!(proxy.answers_dropped(), 1);
    wait_connections(&proxy, 1).await;
    // One shot: other and new connections work normally.
    round_trip(&mut bystander, b"still").await;
    let mut again = client(&proxy).await;
    round_trip(&mut again, b"again").await;
    assert_eq!(proxy.answers_dropped(), 1);
}

#[tokio::test]
async fn reset_all_closes_every_connection() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut a = client(&proxy).await;
    let mut b = client(&proxy).await;
    round_trip(&mut a, b"a").await;
    round_trip(&mut b, b"b").await;
    assert_eq!(proxy.connections(), 2);
    proxy.reset_all();
    assert_closed(&mut a).await;
    assert_closed(&mut b).await;
    wait_connections(&proxy, 0).await;
    let mut c = client(&proxy).await;
    round_trip(&mut c, b"new").await;
}

#[tokio::test]
async fn upstream_clients_are_the_peers_the_server_sees_and_a_server_close_reaches_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(listener.local_addr().unwrap()).await.unwrap();
    assert!(proxy.upstream_clients().is_empty());
    let mut a = client(&proxy).await;
    let _b = client(&proxy).await;
    let (server_a, peer_a) = listener.accept().await.unwrap();
    let (_server_b, peer_b) = listener.accept().await.unwrap();
    wait_connections(&proxy, 2).await;
    let mut seen = proxy.upstream_clients();
    seen.sort();
    let mut peers = vec![peer_a, peer_b];
    peers.sort();
    assert_eq!(seen, peers);
    // The server closes one of them: its client hears the end, the other one stays listed.
    drop(server_a);
    assert_closed(&mut a).await;
    drop(a);
    wait_connections(&proxy, 1).await;
    assert_eq!(proxy.upstream_clients(), vec![peer_b]);
}

#[tokio::test]
async fn refuse_new_rejects_only_new_connections() {
    let mut server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut open = client(&proxy).await;
    round_trip(&mut open, b"open").await;
    proxy.refuse_new(true);
    if let Ok(mut refused) = TcpStream::connect(proxy.addr()).await {
        let _ = refused.write_all(b"nope").await;
        assert_closed(&mut refused).await;
    }
    assert_eq!(server.next().await, b"open");
    server.nothing_for(Duration::from_millis(100)).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    round_trip(&mut open, b"still").await;
    proxy.refuse_new(false);
    let mut c = client(&proxy).await;
    round_trip(&mut c, b"back").await;
}

#[tokio::test]
async fn heal_clears_every_fault() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut c = client(&proxy).await;
    proxy.latency(Direction::Both, Duration::from_secs(3600));
    proxy.blackhole(Direction::Both);
    proxy.refuse_new(true);
    proxy.drop_next_answer();
    proxy.heal();
    round_trip(&mut c, b"live").await;
    let mut fresh = client(&proxy).await;
    round_trip(&mut fresh, b"fresh").await;
    assert_eq!(proxy.answers_dropped(), 0);
}

#[tokio::test]
async fn dropping_the_last_clone_stops_everything() {
    let server = EchoServer::start().await;
    let proxies = FaultProxy::start_many(&[server.addr, server.addr]).await.unwrap();
    let (proxy, other) = (proxies[0].clone(), proxies[1].clone());
    drop(proxies);
    let addr = proxy.addr();
    let mut c = client(&proxy).await;
    round_trip(&mut c, b"x").await;
    let clone = proxy.clone();
    drop(proxy);
    round_trip(&mut c, b"clone keeps it alive").await;
    drop(clone);
    assert_closed(&mut c).await;
    // The listener is gone: connecting fails, or the connection is closed at once.
    if let Ok(mut late) = TcpStream::connect(addr).await {
        assert_closed(&mut late).await;
    }
    let mut o = client(&other).await;
    round_trip(&mut o, b"other proxy unaffected").await;
}

#[tokio::test]
async fn drop_next_answer_matching_fires_only_on_its_needle() {
    let mut server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut c = client(&proxy).await;
    proxy.drop_next_answer_matching(b"key-7");
    round_trip(&mut c, b"SET key-6 x").await;
    assert_eq!(server.next().await, b"SET key-6 x");
    assert_eq!(proxy.answers_dropped(), 0);
    c.write_all(b"SET key-7 x").await.unwrap();
    assert_eq!(server.next().await, b"SET key-7 x");
    assert_closed(&mut c).await;
    assert_eq!(proxy.answers_dropped(), 1);
}

#[tokio::test]
async fn drop_answer_grace_discards_a_late_answer_before_the_reset() {
    let mut server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let grace = Duration::from_millis(300);
    proxy.set_drop_answer_grace(grace);
    proxy.heal();
    let mut c = client(&proxy).await;
    round_trip(&mut c, b"warm").await;
    assert_eq!(server.next().await, b"warm");
    proxy.drop_next_answer();
    let start = Instant::now();
    c.write_all(b"req").await.unwrap();
    assert_eq!(server.next().await, b"req");
    // The server answers in two parts; the second comes within the grace and is lost too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.push.send(b"rest of the answer".to_vec()).unwrap();
    assert_closed(&mut c).await;
    assert!(start.elapsed() >= grace, "reset after {:?}, before the grace", start.elapsed());
    assert_eq!(proxy.answers_dropped(), 1);
}
