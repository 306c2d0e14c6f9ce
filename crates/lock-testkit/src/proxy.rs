//! [`FaultProxy`]: a TCP proxy on 127.0.0.1 that sits between a client and its server and
//! injects network faults on demand — latency, a blackhole per direction, a lost answer,
//! connection resets and refused connections. It also names the client addresses its
//! connections have on the server ([`FaultProxy::upstream_clients`]), so that a test can have
//! the server itself kill exactly those connections.
//!
//! Every open connection runs one task per direction. Each task reads the current faults on
//! every chunk, so switching a fault on or off takes effect on live connections at once.
//!
//! ```ignore
//! let proxy = FaultProxy::start(server_addr).await?;
//! let client = connect(proxy.addr());
//! proxy.blackhole(Direction::ToClient); // requests arrive, answers vanish
//! proxy.heal();                          // new data flows again
//! ```

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The direction of the traffic a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server (requests).
    ToServer,
    /// Server to client (answers).
    ToClient,
    /// Both directions.
    Both,
}

impl Direction {
    fn covers(self, lane: Lane) -> bool {
        matches!(
            (self, lane),
            (Direction::Both, _) | (Direction::ToServer, Lane::Up) | (Direction::ToClient, Lane::Down)
        )
    }
}

/// One direction of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

impl Lane {
    fn idx(self) -> usize {
        match self {
            Lane::Up => 0,
            Lane::Down => 1,
        }
    }
}

/// The faults currently switched on.
#[derive(Default)]
struct Faults {
    latency: [Duration; 2],
    blackhole: [bool; 2],
    refuse: bool,
    /// A pending `drop_next_answer` shot: fires on the next client-to-server chunk that
    /// contains this needle (an empty needle matches every chunk).
    drop_next_answer: Option<Vec<u8>>,
}

/// Per-connection state shared by its two tasks.
struct Conn {
    /// `true` once the connection must be reset.
    kill: watch::Sender<bool>,
    /// Set when this connection's answers are to be discarded (see `drop_next_answer`).
    drop_answers: AtomicBool,
    /// The local address of the upstream socket: the client address the server sees.
    upstream_client: SocketAddr,
}

impl Conn {
    fn kill(&self) {
        self.kill.send_replace(true);
    }
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    conns: Mutex<Conns>,
    answers_dropped: AtomicU64,
    /// How long a connection whose answer is dropped lives on (discarding) before its reset.
    drop_grace: Mutex<Duration>,
}

#[derive(Default)]
struct Conns {
    open: HashMap<u64, Arc<Conn>>,
    next_id: u64,
    closed: bool,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill_all(&self) {
        for conn in self.conns().open.values() {
            conn.kill();
        }
    }
}

/// Removes a connection from the open set once both of its tasks have ended.
struct Registration {
    shared: Weak<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.conns().open.remove(&self.id);
        }
    }
}

/// Owned by the clones of a [`FaultProxy`]; the last one stops everything.
struct Handle {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.conns().closed = true;
        self.shared.kill_all();
    }
}

/// A TCP proxy on 127.0.0.1 that forwards to one upstream address and injects faults.
///
/// Cheap to clone; the last clone to be dropped stops the listener and resets every open
/// connection.
#[derive(Clone)]
pub struct FaultProxy {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.inner.shared.addr)
            .field("upstream", &self.inner.shared.upstream)
            .field("connections", &self.connections())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a pass-through proxy to `upstream`, listening on a free port of 127.0.0.1.
    /// Must be called inside a tokio runtime, which then runs the proxy's tasks.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let shared = Arc::new(Shared {
            addr: listener.local_addr()?,
            upstream,
            faults: Mutex::new(Faults::default()),
            conns: Mutex::new(Conns::default()),
            answers_dropped: AtomicU64::new(0),
            drop_grace: Mutex::new(Duration::ZERO),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::downgrade(&shared)));
        Ok(FaultProxy { inner: Arc::new(Handle { shared, accept }) })
    }

    /// Starts one proxy per upstream, in order.
    pub async fn start_many(upstreams: &[SocketAddr]) -> io::Result<Vec<FaultProxy>> {
        let mut proxies = Vec::with_capacity(upstreams.len());
        for &upstream in upstreams {
            proxies.push(FaultProxy::start(upstream).await?);
        }
        Ok(proxies)
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared().addr
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.shared().addr.port()
    }

    /// The server this proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared().upstream
    }

    /// Back to pass-through: clears latency, blackholes, refusal and a pending
    /// [`drop_next_answer`](Self::drop_next_answer). Still-open connections forward new data
    /// again; data a blackhole swallowed stays lost. A connection whose answers are already
    /// being dropped is not revived (it is reset once its answer arrives).
    pub fn heal(&self) {
        *self.shared().faults() = Faults::default();
    }

    /// Delays every chunk travelling in `dir` by `d` from the moment the proxy read it
    /// (order preserved). `Duration::ZERO` removes the delay.
    pub fn latency(&self, dir: Direction, d: Duration) {
        let mut faults = self.shared().faults();
        for lane in [Lane::Up, Lane::Down] {
            if dir.covers(lane) {
                faults.latency[lane.idx()] = d;
            }
        }
    }

    /// Keeps connections open but forwards nothing in `dir`: data read in that direction
    /// (also data still delayed by [`latency`](Self::latency)) is discarded and never
    /// delivered, not even after [`heal`](Self::heal). The other direction keeps flowing.
    pub fn blackhole(&self, dir: Direction) {
        let mut faults = self.shared().faults();
        for lane in [Lane::Up, Lane::Down] {
            if dir.covers(lane) {
                faults.blackhole[lane.idx()] = true;
            }
        }
    }

    /// One shot: the next client-to-server chunk (on any connection) is forwarded, and from
    /// then on every server-to-client byte of that connection is discarded; when the first
    /// of them arrives the connection is reset on both sides. The server applies the
    /// request, the client never hears the answer.
    ///
    /// Caveat for multiplexed protocols (HTTP/2, so etcd's gRPC): the "next chunk" may be a
    /// control frame or another stream's request, and the first server byte after it (maybe a
    /// flow-control frame rather than the answer) resets the whole connection, failing every
    /// call in flight on it. Aim the shot with
    /// [`drop_next_answer_matching`](Self::drop_next_answer_matching) and let the server
    /// finish with [`set_drop_answer_grace`](Self::set_drop_answer_grace).
    pub fn drop_next_answer(&self) {
        self.shared().faults().drop_next_answer = Some(Vec::new());
    }

    /// Like [`drop_next_answer`](Self::drop_next_answer), but fires on the next
    /// client-to-server chunk that contains `needle` (for instance a key, which Redis, MySQL
    /// and etcd's protobuf messages carry verbatim). Chunks without it pass untouched. A
    /// needle split across two chunks is not seen.
    pub fn drop_next_answer_matching(&self, needle: &[u8]) {
        assert!(!needle.is_empty(), "an empty needle: use drop_next_answer");
        self.shared().faults().drop_next_answer = Some(needle.to_vec());
    }

    /// After a [`drop_next_answer`](Self::drop_next_answer) shot, reset the connection
    /// `grace` after the first server byte instead of at once, discarding everything the
    /// server sends meanwhile; gives a server that answers in several writes (or sends a
    /// flow-control frame first) time to finish applying the request. Zero by default; not
    /// cleared by [`heal`](Self::heal).
    pub fn set_drop_answer_grace(&self, grace: Duration) {
        *self.shared().drop_grace.lock().unwrap_or_else(|e| e.into_inner()) = grace;
    }

    /// Resets every open connection now, on both sides.
    pub fn reset_all(&self) {
        self.shared().kill_all();
    }

    /// While on, new client connections are accepted and reset at once (nothing is
    /// forwarded upstream). Open connections are not affected.
    pub fn refuse_new(&self, on: bool) {
        self.shared().faults().refuse = on;
    }

    /// How many proxied connections are currently open.
    pub fn connections(&self) -> usize {
        self.shared().conns().open.len()
    }

    /// The client addresses the server sees for this proxy's open connections (the local
    /// addresses of the proxy's sockets to [`upstream`](Self::upstream)), in no particular
    /// order. A server command that kills clients by address (MariaDB's `KILL` of a
    /// `processlist` row, Redis `CLIENT KILL ADDR`) thus reaches this proxy's connections and
    /// no others.
    pub fn upstream_clients(&self) -> Vec<SocketAddr> {
        self.shared().conns().open.values().map(|c| c.upstream_client).collect()
    }

    /// How many [`drop_next_answer`](Self::drop_next_answer) shots have fired.
    pub fn answers_dropped(&self) -> u64 {
        self.shared().answers_dropped.load(Ordering::SeqCst)
    }
}

/// Closes a socket with a reset (RST) rather than an orderly FIN.
fn abort_socket(stream: &TcpStream) {
    // A zero linger never blocks on close; it only turns the close into a reset.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn accept_loop(listener: TcpListener, shared: Weak<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Transient accept errors (e.g. out of file descriptors): back off briefly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Some(shared) = shared.upgrade() else { return };
        if shared.faults().refuse {
            abort_socket(&client);
            continue;
        }
        tokio::spawn(connect(client, shared));
    }
}

async fn connect(client: TcpStream, shared: Arc<Shared>) {
    let server = match TcpStream::connect(shared.upstream).await {
        Ok(server) => server,
        Err(_) => {
            abort_socket(&client);
            return;
        }
    };
    let Ok(upstream_client) = server.local_addr() else {
        abort_socket(&client);
        abort_socket(&server);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (kill, kill_rx) = watch::channel(false);
    let conn = Arc::new(Conn { kill, drop_answers: AtomicBool::new(false), upstream_client });
    let registration = {
        let mut conns = shared.conns();
        if conns.closed {
            abort_socket(&client);
            abort_socket(&server);
            return;
        }
        let id = conns.next_id;
        conns.next_id += 1;
        conns.open.insert(id, conn.clone());
        Arc::new(Registration { shared: Arc::downgrade(&shared), id })
    };
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let weak = Arc::downgrade(&shared);
    tokio::spawn(pump(
        Lane::Up,
        client_r,
        server_w,
        weak.clone(),
        conn.clone(),
        kill_rx.clone(),
        registration.clone(),
    ));
    tokio::spawn(pump(Lane::Down, server_r, client_w, weak, conn, kill_rx, registration));
}

/// `true` when `needle` is empty or occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a pump does with a chunk it has read.
enum Verdict {
    Forward(Duration),
    Discard,
    /// Discard and reset the connection.
    Reset,
}

fn judge(lane: Lane, chunk: &[u8], shared: &Shared, conn: &Conn) -> Verdict {
    let mut faults = shared.faults();
    match lane {
        Lane::Down if conn.drop_answers.load(Ordering::SeqCst) => Verdict::Reset,
        _ if faults.blackhole[lane.idx()] => Verdict::Discard,
        Lane::Up if faults.drop_next_answer.as_deref().is_some_and(|needle| contains(chunk, needle)) => {
            faults.drop_next_answer = None;
            conn.drop_answers.store(true, Ordering::SeqCst);
            shared.answers_dropped.fetch_add(1, Ordering::SeqCst);
            Verdict::Forward(faults.latency[lane.idx()])
        }
        _ => Verdict::Forward(faults.latency[lane.idx()]),
    }
}

/// Resolves once the connection is to be reset (or its state is gone).
async fn killed(kill: &mut watch::Receiver<bool>) {
    let _ = kill.wait_for(|&k| k).await;
}

/// Forwards one direction of a connection until EOF, an error or a reset.
async fn pump(
    lane: Lane,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Weak<Shared>,
    conn: Arc<Conn>,
    mut kill: watch::Receiver<bool>,
    _registration: Arc<Registration>,
) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut eof = false;
    // When a connection whose answer is dropped is to be reset (see `set_drop_answer_grace`).
    let mut reset_at: Option<Instant> = None;
    // Ends by returning (orderly EOF) or by breaking out to reset the connection.
    let mut kill_write = kill.clone();
    loop {
        if eof && queue.is_empty() {
            if reset_at.is_some() {
                break;
            }
            let _ = to.shutdown().await;
            return;
        }
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            _ = killed(&mut kill) => break,
            _ = tokio::time::sleep_until(reset_at.unwrap_or_else(Instant::now)), if reset_at.is_some() => break,
            read = from.read(&mut buf), if !eof && queue.len() < 64 => match read {
                Ok(0) => eof = true,
                Ok(n) => {
                    let Some(shared) = shared.upgrade() else { break };
                    match judge(lane, &buf[..n], &shared, &conn) {
                        Verdict::Forward(delay) => queue.push_back((Instant::now() + delay, buf[..n].to_vec())),
                        Verdict::Discard => {}
                        Verdict::Reset => {
                            let grace = *shared.drop_grace.lock().unwrap_or_else(|e| e.into_inner());
                            if grace.is_zero() {
                                break;
                            }
                            reset_at.get_or_insert(Instant::now() + grace);
                        }
                    }
                }
                Err(_) => break,
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let (_, chunk) = queue.pop_front().expect("a due chunk");
                let Some(shared) = shared.upgrade() else { break };
                // A blackhole switched on while the chunk was delayed swallows it too.
                if shared.faults().blackhole[lane.idx()] {
                    continue;
                }
                tokio::select! {
                    _ = killed(&mut kill_write) => break,
                    written = to.write_all(&chunk) => if written.is_err() { break },
                }
            }
        }
    }
    conn.kill();
    abort_socket(from.as_ref());
    abort_socket(to.as_ref());
}

#[cfg(test)]
mod tests;
