//! Every endpoint over real HTTP on 127.0.0.1, in front of the memory backend.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use distlock::deadlock::{DeadlockConfig, DeadlockPolicy};
use distlock::memory::MemoryLockProvider;
use distlock::{LockConfig, LockManager, LockOptions, LockProvider, WaitPolicy, Waiting};
use distlock_serve::PrometheusHandle;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The process's one global recorder, shared by the tests of this file (each uses its own key
/// classes).
fn recorder() -> PrometheusHandle {
    static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
    RECORDER
        .get_or_init(|| distlock_serve::install_recorder().expect("no other recorder is installed"))
        .clone()
}

/// A server on a free port of 127.0.0.1, stopped by [`Server::stop`].
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(provider: Arc<dyn LockProvider>, metrics: Option<PrometheusHandle>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(distlock_serve::serve_on(listener, provider, metrics, async {
            let _ = stopped.await;
        }));
        Server { addr, stop, task }
    }

    async fn get(&self, path: &str) -> Reply {
        get(self.addr, path).await
    }

    /// Stops the server; it must end cleanly.
    async fn stop(self) {
        let _ = self.stop.send(());
        let ended = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        ended.expect("the server stops on its shutdown signal").unwrap().expect("served without error");
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET path` over a fresh connection.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("an answer within 10 s");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply { status, content_type: header("content-type").unwrap_or_default(), body }
}

/// The payload of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// Polls `check` until it returns `Some`, for at most 20 s.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < until, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn patient(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner)
        .ttl(Duration::from_secs(60))
        .wait(WaitPolicy::deadline(Duration::from_secs(30)))
}

/// Deadlock detection every 200 ms, reporting.
fn detector() -> DeadlockConfig {
    DeadlockConfig { enabled: true, interval: Duration::from_millis(200), policy: DeadlockPolicy::Report }
}

/// `p` behind a waiting layer of its own, as another process would wait on a shared backend.
fn detecting(p: Arc<dyn LockProvider>) -> Arc<Waiting> {
    Arc::new(Waiting::new(p, detector(), None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_shows_a_held_lock_and_its_waiter() {
    let metrics = recorder();
    // The facade's stack: Traced(Metered(Waiting(memory))).
    let config = LockConfig { deadlock: detector(), ..LockConfig::memory() };
    let manager = LockManager::new(None, config).await.expect("a memory provider");
    let metered = manager.lock_provider().clone();
    let server = Server::start(metered.clone(), Some(metrics)).await;

    // One finished hold of the class, so that its hold time is recorded.
    let done = metered.lock(&patient("http:done", "someone")).await.unwrap();
    metered.unlock(&done.key, &done.owner).await.unwrap();

    let key = r#"http:<b>&"x""#;
    let owner = "owner&<1>";
    let lease = metered.lock(&patient(key, owner)).await.expect("free");
    let p = metered.clone();
    let waiter = tokio::spawn(async move { p.lock(&patient(key, "waiter")).await });
    eventually("the wait is published", || async {
        let waits = metered.waits("http:").await.unwrap();
        waits.iter().any(|w| w.owner == "waiter").then_some(())
    })
    .await;

    let health = server.get("/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(health.content_type.starts_with("application/json"), "{health:?}");
    let health = health.json();
    assert_eq!((&health["provider"], &health["healthy"]), (&"memory".into(), &true.into()), "{health}");

    let locks = server.get("/locks").await;
    assert_eq!(locks.status, 200, "{locks:?}");
    let snap = locks.json();
    assert_eq!(snap["provider"], "memory");
    assert_eq!(snap["health"]["healthy"], true);
    let listed = snap["locks"].as_array().expect("locks");
    let lock = listed.iter().find(|l| l["key"] == key).unwrap_or_else(|| panic!("{key} listed: {snap}"));
    assert_eq!(lock["owner"], owner);
    assert_eq!(lock["token"], lease.token.get());
    assert_eq!(lock["depth"], 1);
    assert!(lock["remaining_ttl_ms"].as_u64().unwrap() > 0, "{lock}");
    let waits = snap["waits"].as_array().expect("waits");
    let wait = waits.iter().find(|w| w["owner"] == "waiter").unwrap_or_else(|| panic!("waiter: {snap}"));
    assert_eq!((&wait["key"], &wait["holder"]), (&key.into(), &owner.into()), "{wait}");
    assert_eq!(snap["cycles"], serde_json::json!([]));
    let classes = snap["classes"].as_array().expect("a recorder: classes");
    let http = classes.iter().find(|c| c["class"] == "http").unwrap_or_else(|| panic!("class http: {snap}"));
    assert_eq!(http["acquired"], 2, "{http}");
    assert_eq!(http["timeouts"], 0, "the waiter still waits: {http}");
    assert_eq!(http["contended"], 1, "{http}");
    assert_eq!(http["waiting"], 1, "{http}");
    assert_eq!(http["held"], 1, "{http}");

    let other = server.get("/locks?prefix=nothing%3A").await;
    assert_eq!(other.status, 200);
    assert_eq!(other.json()["locks"], serde_json::json!([]), "{other:?}");
    let nul = server.get("/locks?prefix=a%00b").await;
    assert_eq!(nul.status, 400, "a prefix with NUL is refused: {nul:?}");

    let page = server.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(page.body.contains(r#"<meta http-equiv="refresh" content="2">"#), "{}", page.body);
    assert!(page.body.contains("<td>http:&lt;b&gt;&amp;&quot;x&quot;</td>"), "escaped key: {}", page.body);
    assert!(page.body.contains("<td>owner&amp;&lt;1&gt;</td>"), "escaped owner: {}", page.body);
    assert!(!page.body.contains("<b>&"), "no raw key on the page: {}", page.body);
    assert!(page.body.contains("<td>waiter</td>"), "the waiter: {}", page.body);
    assert!(!page.body.contains("id=\"deadlocks\""), "no deadlock: {}", page.body);

    let text = server.get("/metrics").await;
    assert_eq!(text.status, 200);
    assert!(text.content_type.starts_with("text/plain"), "{text:?}");
    for series in [
        r#"distlock_acquire_total{provider="memory",class="http",outcome="acquired"} 2"#,
        r#"distlock_acquire_wait_seconds_bucket{provider="memory",class="http",le="0.001"}"#,
        r#"distlock_hold_seconds_bucket{provider="memory",class="http",le="3600"} 1"#,
        r#"distlock_contention_total{provider="memory",class="http"} 1"#,
        r#"distlock_provider_healthy{provider="memory"} 1"#,
    ] {
        assert!(text.body.contains(series), "{series} in {}", text.body);
    }

    // The holder lets go: the waiter gets the lock, and the snapshot follows.
    metered.unlock(key, owner).await.unwrap();
    let got = waiter.await.unwrap().expect("the waiter gets the lock");
    assert_eq!(got.owner.as_ref(), "waiter");
    let snap = server.get("/locks").await.json();
    assert_eq!(snap["locks"][0]["owner"], "waiter", "{snap}");

    // A closed provider is unhealthy, and its locks cannot be listed.
    manager.close().await.unwrap();
    let health = server.get("/healthz").await;
    assert_eq!(health.status, 503, "{health:?}");
    let health = health.json();
    assert_eq!(health["healthy"], false);
    assert!(health["error"].as_str().unwrap().contains("closed"), "{health}");
    let locks = server.get("/locks").await;
    assert_eq!(locks.status, 503, "{locks:?}");
    assert!(locks.json()["errors"][0].as_str().unwrap().starts_with("locks:"), "{locks:?}");
    let page = server.get("/").await;
    assert!(page.body.contains("unhealthy"), "{}", page.body);
    let text = server.get("/metrics").await;
    assert!(text.body.contains(r#"distlock_provider_healthy{provider="memory"} 0"#), "{}", text.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_shows_in_the_json_and_on_the_page() {
    let base: Arc<dyn LockProvider> = Arc::new(MemoryLockProvider::new());
    let alice_side = detecting(base.clone());
    let bob_side = detecting(base.clone());
    let server = Server::start(base.clone(), Some(recorder())).await;
    alice_side.lock(&patient("dl:a", "alice")).await.unwrap();
    bob_side.lock(&patient("dl:b", "bob")).await.unwrap();
    let p = alice_side.clone();
    let alice = tokio::spawn(async move { p.lock(&patient("dl:b", "alice")).await });
    eventually("alice's wait is published", || async {
        base.waits("dl:").await.unwrap().iter().any(|w| w.owner == "alice").then_some(())
    })
    .await;
    let p = bob_side.clone();
    let bob = tokio::spawn(async move { p.lock(&patient("dl:a", "bob")).await });

    let snap = eventually("the cycle in /locks", || async {
        let snap = server.get("/locks?prefix=dl%3A").await.json();
        (!snap["cycles"].as_array().unwrap().is_empty()).then_some(snap)
    })
    .await;
    let cycles = snap["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 1, "{snap}");
    let edges: Vec<(&str, &str, &str)> = cycles[0]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["waiter"].as_str().unwrap(), e["key"].as_str().unwrap(), e["holder"].as_str().unwrap()))
        .collect();
    assert_eq!(edges, vec![("alice", "dl:b", "bob"), ("bob", "dl:a", "alice")], "{snap}");

    let page = server.get("/?prefix=dl%3A").await;
    assert_eq!(page.status, 200);
    let body = &page.body;
    assert!(body.contains(r#"<section class="deadlocks" id="deadlocks">"#), "{body}");
    assert!(body.contains("<b>alice</b> waits for <code>dl:b</code> held by <b>bob</b>"), "{body}");
    assert!(
        body.contains("broken at <b>bob</b>'s wait for <code>dl:a</code>"),
        "bob's is the younger wait: {body}"
    );
    let marked = |table: &str| {
        let start =
            body.find(&format!(r#"<table id="{table}">"#)).unwrap_or_else(|| panic!("no {table} table"));
        let rows = &body[start..start + body[start..].find("</table>").expect("table end")];
        rows.matches(r#"<tr class="deadlock"><td>dl:"#).count()
    };
    assert_eq!(marked("locks"), 2, "both locks are marked: {body}");
    assert_eq!(marked("longest"), 2, "and again among the longest holds: {body}");
    assert_eq!(marked("waits"), 2, "both waits are marked: {body}");

    alice.abort();
    bob.abort();
    let _ = (alice.await, bob.await);
    base.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn without_a_recorder_there_are_no_metrics() {
    let provider: Arc<dyn LockProvider> = Arc::new(MemoryLockProvider::new());
    let server = Server::start(provider.clone(), None).await;
    let text = server.get("/metrics").await;
    assert_eq!(text.status, 404, "{text:?}");
    let snap = server.get("/locks").await;
    assert_eq!(snap.status, 200);
    assert_eq!(snap.json()["classes"], Value::Null);
    let page = server.get("/").await;
    assert!(page.body.contains("no metrics recorder in this process"), "{}", page.body);
    assert!(page.body.contains(r#"<p class="empty" id="locks">no lock held</p>"#), "{}", page.body);
    provider.close().await.unwrap();
    server.stop().await;
}
