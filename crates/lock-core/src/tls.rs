//! What the server backends share about TLS and credentials: [`TlsFiles`] (the PEM files and
//! server name a backend's `tls` table names), [`Secret`] (a password or key that `Debug`
//! never shows) and [`redact_url`] (a URL fit for messages).
//!
//! Reading the files and speaking TLS is each backend's own business, behind its `tls`
//! feature; these types only carry the settings, so every backend spells them alike:
//!
//! ```toml
//! [redis.tls]                        # or [mysql.tls], [postgres.tls], [etcd.tls]
//! ca = "/etc/ssl/distlock/ca.pem"    # CA certificate(s) to trust instead of the system's
//! cert = "/etc/ssl/distlock/client.pem"   # client certificate, with `key`, when the server asks
//! key = "/etc/ssl/distlock/client-key.pem"
//! server_name = "redis.internal"     # name to verify instead of the URL's host
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{LockError, Result};

/// TLS to a server from PEM files: the CA to trust, an optional client certificate and key,
/// and the name to verify. Holds paths only; the backend reads the files when it connects,
/// and a file it cannot read is a [`LockError::Config`] naming the path (never its content).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsFiles {
    /// CA certificate(s) to trust; `None`: the system's trust store.
    pub ca: Option<PathBuf>,
    /// Client certificate (chain); needs [`key`](Self::key).
    pub cert: Option<PathBuf>,
    /// Private key of the client certificate; needs [`cert`](Self::cert).
    pub key: Option<PathBuf>,
    /// Server name to verify, when it differs from the host the backend connects to.
    #[serde(alias = "domain")]
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// Trusting the CA certificate(s) in `ca`.
    pub fn new(ca: impl Into<PathBuf>) -> Self {
        TlsFiles { ca: Some(ca.into()), ..Self::default() }
    }

    /// Sets the client certificate and its key.
    pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Sets the server name to verify.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Checks what can be checked without reading the files: a certificate goes with its
    /// key, names are not empty. `backend` prefixes the message.
    pub fn validate(&self, backend: &str) -> Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(LockError::Config(format!(
                "{backend}: a TLS client certificate and its key go together"
            )));
        }
        if self.server_name.as_deref().is_some_and(str::is_empty) {
            return Err(LockError::Config(format!("{backend}: the TLS server name is empty")));
        }
        Ok(())
    }

    /// Reads one of the files, mapping a failure to a [`LockError::Config`] that names the
    /// backend and the path.
    pub fn read(backend: &str, path: &std::path::Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| {
            LockError::Config(format!("{backend}: cannot read TLS file {}: {e}", path.display()))
        })
    }
}

/// A password or other secret from the configuration. `Debug` and `Display` print `***`;
/// [`expose`](Self::expose) hands the value to the client that needs it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the client; never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `url` with the user information's password (`scheme://user:password@host`) replaced by
/// `***`, and any `password=` query value likewise, for messages, logs and `Debug` output.
///
/// ```
/// use lock_core::tls::redact_url;
///
/// assert_eq!(redact_url("rediss://app:s3cret@h:6380/0"), "rediss://app:***@h:6380/0");
/// assert_eq!(redact_url("redis://:s3cret@h"), "redis://:***@h");
/// assert_eq!(redact_url("mysql://h/db?password=s3cret&ssl-mode=REQUIRED"), "mysql://h/db?password=***&ssl-mode=REQUIRED");
/// assert_eq!(redact_url("redis://h:1"), "redis://h:1");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme) = out.find("://") {
        let rest = scheme + 3;
        let authority_end = out[rest..].find(['/', '?', '#']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@').map(|i| rest + i) {
            let colon = out[rest..at].find(':').map(|i| rest + i);
            match colon {
                Some(colon) => out.replace_range(colon + 1..at, "***"),
                // Only a user name (`redis://secret@h` is how some write a password alone).
                None => out.replace_range(rest..at, "***"),
            }
        }
    }
    if let Some(query) = out.find('?') {
        let (head, tail) = out.split_at(query + 1);
        let pairs: Vec<String> = tail
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", pairs.join("&"));
    }
    out
}

/// How rustls words a refused handshake, in its `Display` and `Debug` forms, as the clients
/// of the backends pass it on (often inside an I/O error).
const TLS_REFUSALS: &[&str] = &[
    "invalid peer certificate",
    "InvalidCertificate",
    "received fatal alert",
    "AlertReceived",
    "peer is incompatible",
    "PeerIncompatible",
    "peer misbehaved",
    "PeerMisbehaved",
    "NoCertificatesPresented",
    "no certificates presented",
];

/// `true` when a client's error `message` tells of a refused TLS handshake (a certificate one
/// side does not trust, a name that does not match, no common protocol): retrying will not
/// help, so backends report it as a [`LockError::Backend`] error, "TLS handshake failed".
///
/// ```
/// assert!(lock_core::tls::is_tls_refusal("io error: invalid peer certificate: UnknownIssuer"));
/// assert!(!lock_core::tls::is_tls_refusal("connection refused"));
/// ```
pub fn is_tls_refusal(message: &str) -> bool {
    TLS_REFUSALS.iter().any(|p| message.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "\"***\" ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn redacts_every_spelling_of_a_password() {
        for (url, want) in [
            ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
            ("rediss://u:pw@h", "rediss://u:***@h"),
            ("redis://pw@h", "redis://***@h"),
            ("mysql://u:p@ss@h/db", "mysql://u:***@h/db"),
            ("postgres://h/db?user=u&password=pw", "postgres://h/db?user=u&password=***"),
            ("http://h:2379", "http://h:2379"),
            ("redis://h/0?x=a@b", "redis://h/0?x=a@b"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn a_certificate_goes_with_its_key() {
        assert!(TlsFiles::new("ca.pem").validate("redis").is_ok());
        let half = TlsFiles { cert: Some("c.pem".into()), ..TlsFiles::default() };
        assert!(matches!(half.validate("redis"), Err(LockError::Config(m)) if m.starts_with("redis:")));
    }
}
