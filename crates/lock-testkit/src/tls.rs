//! [`TestCerts`]: a throwaway certificate authority for the TLS tests of every backend, made
//! with the `openssl` command in a temporary directory: a CA, a server certificate for
//! `127.0.0.1` and `localhost`, a client certificate, and a second, unrelated CA that signed
//! none of them (to show that a client trusting it refuses the server).
//!
//! Every key is an unencrypted P-256 key in PKCS#8 PEM; certificates are valid for a day.
//! A missing `openssl` makes [`TestCerts::make`] return `Err`, which a test hands to
//! [`require_or_skip`](crate::require_or_skip).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A CA, certificates it signed, and an unrelated CA, as PEM files in a directory of their
/// own. Dropping it removes the directory.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let bin = crate::servers::find_program("openssl", None, &["/usr/bin/openssl"])?;
    let out = Command::new(bin)
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

const NEW_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A self-signed CA certificate `{name}.pem` with its key `{name}-key.pem`.
fn make_ca(dir: &Path, name: &str) -> Result<(), String> {
    let (key, pem, subject) =
        (format!("{name}-key.pem"), format!("{name}.pem"), format!("/CN=distlock-test-{name}"));
    let args =
        [&["req", "-x509"][..], &NEW_KEY, &["-days", "1", "-subj", &subject, "-keyout", &key, "-out", &pem]];
    openssl(dir, &args.concat())
}

/// `{name}.pem` and `{name}-key.pem`, signed by the CA `ca`, for `usage` with `san`.
fn make_leaf(dir: &Path, name: &str, usage: &str, san: &str) -> Result<(), String> {
    let ext = format!("{name}.ext");
    fs::write(dir.join(&ext), format!("subjectAltName={san}\nextendedKeyUsage={usage}\n"))
        .map_err(|e| e.to_string())?;
    let (key, csr, pem) = (format!("{name}-key.pem"), format!("{name}.csr"), format!("{name}.pem"));
    let subject = format!("/CN=distlock-test-{name}");
    openssl(dir, &[&["req"][..], &NEW_KEY, &["-subj", &subject, "-keyout", &key, "-out", &csr]].concat())?;
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
    )
}

impl TestCerts {
    /// Makes the CA, the server and client certificates and the unrelated CA in a new
    /// directory under the system's temporary directory.
    pub fn make() -> Result<TestCerts, String> {
        let dir = std::env::temp_dir().join(format!(
            "distlock-certs-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let certs = TestCerts { dir };
        make_ca(&certs.dir, "ca")?;
        make_ca(&certs.dir, "other-ca")?;
        make_leaf(&certs.dir, "server", "serverAuth", "IP:127.0.0.1,DNS:localhost")?;
        make_leaf(&certs.dir, "client", "clientAuth", "DNS:distlock-test-client")?;
        // Servers that drop privileges (PostgreSQL as `postgres`) must read them too.
        for entry in fs::read_dir(&certs.dir).map_err(|e| e.to_string())?.flatten() {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o644));
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&certs.dir, fs::Permissions::from_mode(0o755));
        Ok(certs)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA certificate that signed nothing here: trusting only it, a client must refuse the
    /// server.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server certificate (for `127.0.0.1` and `localhost`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server certificate's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// The client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    /// The base64 body of the client key, as it stands in its PEM file: a test checks that no
    /// message or `Debug` output contains it (or a line of it).
    pub fn client_key_material(&self) -> Vec<String> {
        let pem = fs::read_to_string(self.client_key()).unwrap_or_default();
        pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(str::to_owned).collect()
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Asserts that `text` (a `Debug` form, an error message) shows neither `password` nor any
/// line of the client key of `certs`.
pub fn assert_no_secrets(text: &str, password: &str, certs: &TestCerts) {
    assert!(!password.is_empty() && !text.contains(password), "the password shows in: {text}");
    for line in certs.client_key_material() {
        assert!(!text.contains(&line), "key material shows in: {text}");
    }
}

/// The first thing every TLS test checks on a connected provider: a lock, a refresh and an
/// unlock of a key of its own go through, and the key is free afterwards.
pub async fn lock_refresh_unlock(provider: &dyn lock_core::LockProvider, key: &str) {
    use std::time::Duration;
    let opts = lock_core::LockOptions::new(key, "tls-owner").ttl(Duration::from_secs(30));
    let lease = provider.lock(&opts).await.expect("lock over TLS");
    let held = provider.is_locked(key).await.expect("is_locked over TLS").expect("held");
    assert_eq!(held.token, lease.token);
    let refreshed =
        provider.refresh_lock(key, "tls-owner", Duration::from_secs(60)).await.expect("refresh over TLS");
    assert_eq!(refreshed.token, lease.token, "a refresh keeps the fencing token");
    provider.unlock(key, "tls-owner").await.expect("unlock over TLS");
    assert!(provider.is_locked(key).await.expect("is_locked over TLS").is_none(), "unlocked");
}

/// Asserts that a connection attempt that must fail failed within `bound` (never a hang),
/// with an error whose message names `backend` and shows no secret; returns the error.
pub async fn assert_fails_cleanly<T, F>(
    backend: &str,
    bound: std::time::Duration,
    attempt: F,
    password: &str,
    certs: &TestCerts,
) -> lock_core::LockError
where
    F: std::future::Future<Output = lock_core::Result<T>>,
{
    let outcome = tokio::time::timeout(bound, attempt).await;
    let Ok(result) = outcome else {
        panic!("{backend}: the refused connection was still pending after {bound:?}")
    };
    let Err(e) = result else { panic!("{backend}: connected where it must be refused") };
    let message = e.to_string();
    eprintln!("refused as expected: {message}");
    assert!(message.contains(backend), "the message does not name {backend}: {message}");
    assert_no_secrets(&message, password, certs);
    assert_no_secrets(&format!("{e:?}"), password, certs);
    e
}

/// [`assert_fails_cleanly`], and the error is one that retrying will not fix (a wrong CA, a
/// wrong password).
pub async fn assert_refused<T, F>(
    backend: &str,
    bound: std::time::Duration,
    attempt: F,
    password: &str,
    certs: &TestCerts,
) where
    F: std::future::Future<Output = lock_core::Result<T>>,
{
    let e = assert_fails_cleanly(backend, bound, attempt, password, certs).await;
    assert!(!e.is_retryable(), "{backend}: a refusal that retrying cannot fix is retryable: {e:?}");
}
