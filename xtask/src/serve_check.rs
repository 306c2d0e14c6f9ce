//! `cargo xtask serve-check`: `distlock serve` end to end, as a scraper, a script and a browser
//! see it.
//!
//! Builds the CLI, starts `distlock serve --listen 127.0.0.1:0` on the memory backend holding
//! a demo lock whose key and owner need escaping, reads the address it announces, checks
//! `/healthz`, `/locks`, `/metrics` and the page over HTTP, then has headless Chromium (Debian's
//! `chromium`, installed when missing and running as root) render the page and checks the
//! held lock in the DOM. Chromium is kept offline: every host name but 127.0.0.1 fails to
//! resolve, every non-loopback request goes to a proxy that does not exist, and background
//! services are off. The server is stopped with SIGTERM and must exit cleanly; on any failure
//! it is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{cargo, services, Result};

/// The demo lock: a key and an owner with every character HTML must escape.
const KEY: &str = r#"demo:<b>&"x""#;
const OWNER: &str = "xtask&check";

pub(crate) fn serve_check() -> Result {
    let bin = build_cli()?;
    let mut server = Server::start(&bin)?;
    let checked = check(&mut server);
    let stopped = server.stop();
    checked?;
    stopped?;
    eprintln!("xtask serve-check: /healthz, /locks, /metrics and the page (also in Chromium) are right");
    Ok(())
}

fn check(server: &mut Server) -> Result {
    let addr = server.addr;
    let health = get(addr, "/healthz")?;
    health.expect(200, &[r#""provider":"memory""#, r#""healthy":true"#])?;

    let locks = get(addr, "/locks")?;
    locks.expect(200, &[r#""key":"demo:<b>&\"x\"","owner":"xtask&check","token":"#, r#""cycles":[]"#])?;

    let metrics = get(addr, "/metrics")?;
    metrics.expect(
        200,
        &[
            r#"distlock_acquire_total{provider="memory",class="demo",outcome="acquired"} 1"#,
            r#"distlock_acquire_wait_seconds_bucket{provider="memory",class="demo",le="0.001"}"#,
            r#"distlock_held_locks{provider="memory",class="demo"} 1"#,
            r#"distlock_provider_healthy{provider="memory"} 1"#,
        ],
    )?;

    let page = get(addr, "/")?;
    page.expect(
        200,
        &[
            r#"<meta http-equiv="refresh" content="2">"#,
            "<td>demo:&lt;b&gt;&amp;&quot;x&quot;</td><td>xtask&amp;check</td>",
        ],
    )?;
    if page.body.contains(KEY) {
        return Err(format!("the page shows the key unescaped:\n{}", page.body));
    }

    let dom = chromium_dom(&format!("http://{addr}/"), &server.scratch)?;
    // In the DOM the key is text: `<`, `>` and `&` serialize as entities, quotes as they are.
    for want in [r#"<table id="locks">"#, r#"<td>demo:&lt;b&gt;&amp;"x"</td><td>xtask&amp;check</td>"#] {
        if !dom.contains(want) {
            return Err(format!("Chromium's DOM lacks {want}:\n{dom}"));
        }
    }
    Ok(())
}

/// Builds the CLI and returns the path of its binary, as cargo reports it.
fn build_cli() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "distlock-cli",
        "--bin",
        "distlock",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("$ {cmd:?}");
    let out = cmd.stderr(Stdio::inherit()).output().map_err(|e| format!("cannot start cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("building the CLI failed with {}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
        .find_map(|l| {
            let path = l.split(r#""executable":""#).nth(1)?.split('"').next()?;
            Path::new(path).file_stem().is_some_and(|s| s == "distlock").then(|| PathBuf::from(path))
        })
        .ok_or_else(|| "cargo did not report the distlock binary".to_string())
}

/// A running `distlock serve`, killed when dropped unless stopped.
struct Server {
    child: Child,
    addr: SocketAddr,
    output: mpsc::Receiver<String>,
    /// `serve-check/` in the target directory the binary was built in.
    scratch: PathBuf,
}

impl Server {
    fn start(bin: &Path) -> Result<Server> {
        let mut cmd = Command::new(bin);
        // The memory backend with the metrics layer on, whatever the caller's environment says.
        for (k, _) in std::env::vars() {
            if k.starts_with("DISTLOCK_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--provider", "memory", "serve", "--listen", "127.0.0.1:0", "--hold"])
            .arg(format!("{KEY}:{OWNER}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        eprintln!("$ {cmd:?}");
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                eprintln!("  serve | {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The binary is `<target>/debug/distlock`.
        let target = bin.parent().and_then(Path::parent).unwrap_or(Path::new("target"));
        let scratch = target.join("serve-check");
        let mut server = Server { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), output, scratch };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = server
                .output
                .recv_timeout(left)
                .map_err(|_| "distlock serve announced no address within 60 s (or exited)".to_string())?;
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split('/').next().unwrap_or_default();
                server.addr = addr.parse().map_err(|e| format!("announced address `{addr}`: {e}"))?;
                return Ok(server);
            }
        }
    }

    /// SIGTERM, then the process must exit 0 within 20 s having said it stopped.
    fn stop(&mut self) -> Result {
        let pid = self.child.id().to_string();
        crate::run(Command::new("kill").args(["-TERM", &pid]))?;
        let until = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > until {
                return Err("distlock serve did not stop within 20 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let said: Vec<String> = self.output.try_iter().collect();
        if !status.success() {
            return Err(format!("distlock serve exited with {status}"));
        }
        if !said.iter().any(|l| l.contains("distlock serve: stopped")) {
            return Err(format!("distlock serve did not report a clean stop: {said:?}"));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP answer.
struct Reply {
    path: String,
    status: u16,
    body: String,
}

impl Reply {
    /// `status`, and every one of `parts` in the body.
    fn expect(&self, status: u16, parts: &[&str]) -> Result {
        if self.status != status {
            return Err(format!(
                "GET {}: status {} instead of {status}:\n{}",
                self.path, self.status, self.body
            ));
        }
        match parts.iter().find(|p| !self.body.contains(**p)) {
            Some(missing) => Err(format!("GET {}: no `{missing}` in:\n{}", self.path, self.body)),
            None => {
                eprintln!("xtask serve-check: GET {} answered {status} with what it should", self.path);
                Ok(())
            }
        }
    }
}

/// `GET path` over HTTP/1.0 (one answer, then the server closes; never chunked).
fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    let failed = |e: std::io::Error| format!("GET {path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(failed)?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).map_err(failed)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(failed)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(failed)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| format!("GET {path}: no headers in {text}"))?;
    let status =
        head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("GET {path}: {head}"))?;
    Ok(Reply { path: path.to_string(), status, body: body.to_string() })
}

/// Debian's Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The DOM of `url` after Chromium loaded it, headless and offline but for loopback; its
/// profile lives under `scratch`.
fn chromium_dom(url: &str, scratch: &Path) -> Result<String> {
    if !Path::new(CHROMIUM).exists() {
        services::apt_install("chromium")?;
    }
    let profile = scratch.join("chromium-profile");
    std::fs::create_dir_all(&profile).map_err(|e| format!("{}: {e}", profile.display()))?;
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-breakpad",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--metrics-recording-only",
        // Offline but for loopback: no name resolves but 127.0.0.1, and anything not on
        // loopback (which bypasses proxies) goes to a proxy on the discard port, closed here.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(["--dump-dom", url])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    eprintln!("$ {cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {CHROMIUM}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = stdout.read_to_string(&mut dom);
        dom
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let until = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err("Chromium did not dump the page within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = reader.join().unwrap_or_default();
    let errors = errors.join().unwrap_or_default();
    if !status.success() || dom.is_empty() {
        return Err(format!("Chromium exited with {status} and no DOM:\n{errors}"));
    }
    std::io::stderr().write_all(b"xtask serve-check: Chromium rendered the page\n").ok();
    Ok(dom)
}
