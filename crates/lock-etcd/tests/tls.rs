//! TLS from PEM files (feature `tls`) against an etcd member that this test starts on free
//! loopback ports, with certificates it makes with `openssl` in a temporary directory. The
//! member asks for client certificates, so the test shows that the CA, the client
//! certificate and its key are all read and used.
//!
//! Needs the `etcd` binary (`DISTLOCK_TEST_ETCD_BIN`, else `/usr/bin/etcd` or `etcd` on the
//! path) and `openssl`; without them the test is skipped, or fails under
//! `DISTLOCK_REQUIRE_SERVICES=1`.
#![cfg(feature = "tls")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lock_core::{LockOptions, LockProvider};
use lock_etcd::{EtcdConfig, EtcdLockProvider, TlsFiles};

/// A TLS member and its files; `Drop` kills it and removes them.
struct TlsMember {
    child: Option<Child>,
    dir: PathBuf,
    url: String,
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certificates(dir: &Path) -> Result<(), String> {
    let ca = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=distlock-test-ca"];
    openssl(dir, &[&ca[..], &["-keyout", "ca-key.pem", "-out", "ca.pem"]].concat())?;
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let ext = format!("{name}.ext");
        std::fs::write(dir.join(&ext), format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"))
            .map_err(|e| e.to_string())?;
        let (key, csr, pem) = (format!("{name}-key.pem"), format!("{name}.csr"), format!("{name}.pem"));
        let subject = format!("/CN=distlock-test-{name}");
        openssl(
            dir,
            &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out", &csr],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        )?;
    }
    Ok(())
}

impl TlsMember {
    fn start() -> Result<TlsMember, String> {
        let bin = lock_testkit::env::etcd_bin()?;
        let dir = std::env::temp_dir().join(format!("distlock-etcd-tls-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let url = format!("https://127.0.0.1:{client_port}");
        let mut member = TlsMember { child: None, dir, url };
        make_certificates(&member.dir)?;
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(member.dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .current_dir(&member.dir)
            .args(["--name", "tls", "--data-dir", "data"])
            .args(["--listen-client-urls", &member.url, "--advertise-client-urls", &member.url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("tls={peer}")])
            .args(["--cert-file", "server.pem", "--key-file", "server-key.pem"])
            .args(["--trusted-ca-file", "ca.pem", "--client-cert-auth"])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        member.child = Some(child);
        Ok(member)
    }

    fn files(&self) -> TlsFiles {
        TlsFiles::new(self.dir.join("ca.pem"))
            .identity(self.dir.join("client.pem"), self.dir.join("client-key.pem"))
    }

    /// A provider over TLS, once the member answers (it has just been started).
    async fn provider(&self) -> EtcdLockProvider {
        let config = EtcdConfig::new([self.url.clone()]).tls_files(self.files());
        let mut last = None;
        for _ in 0..50 {
            match EtcdLockProvider::connect(config.clone()).await {
                Ok(p) if p.health().await.is_ok() => return p,
                Ok(_) => {}
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the TLS member never answered: {last:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_with_a_client_certificate_from_files() {
    let Some(member) = lock_testkit::require_or_skip("tls", TlsMember::start()) else { return };
    let p = member.provider().await;
    let lease = p.lock(&LockOptions::new("tls", "alice")).await.expect("lock over TLS");
    assert_eq!(p.is_locked("tls").await.unwrap().expect("held").token, lease.token);
    p.unlock("tls", "alice").await.unwrap();

    // Without the client certificate the member refuses the connection.
    let anonymous = EtcdConfig::new([member.url.clone()])
        .tls_files(TlsFiles::new(member.dir.join("ca.pem")))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2));
    let refused = match EtcdLockProvider::connect(anonymous).await {
        Ok(q) => q.health().await.map(drop),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "a member that asks for client certificates answered without one");

    // A CA file that is not there is a configuration error, found when connecting.
    let missing = EtcdConfig::new([member.url.clone()]).tls_files(TlsFiles::new(member.dir.join("nope.pem")));
    assert!(matches!(EtcdLockProvider::connect(missing).await, Err(lock_core::LockError::Config(_))));
}
