//! The connect options for a URL and the `tls` table: TLS (feature `tls`) as the MySQL
//! clients spell it in the URL (`ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key`), or from
//! [`TlsFiles`], which turn on `VERIFY_IDENTITY` unless the URL chose a mode.

use std::str::FromStr;

use lock_core::tls::{redact_url, TlsFiles};
use lock_core::{LockError, Result};
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};

/// `url` parsed, with `tls` applied. A URL that does not parse is a
/// [`Config`](LockError::Config) error that shows it without its password.
pub(crate) fn connect_options(url: &str, tls: Option<&TlsFiles>) -> Result<MySqlConnectOptions> {
    let mut options = MySqlConnectOptions::from_str(url).map_err(|e| {
        LockError::Config(format!("mysql: bad URL `{}`: {}", redact_url(url), redact_url(&e.to_string())))
    })?;
    if let Some(files) = tls {
        if !mentions_ssl_mode(url) {
            options = options.ssl_mode(MySqlSslMode::VerifyIdentity);
        }
        if let Some(ca) = &files.ca {
            options = options.ssl_ca(ca);
        }
        if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
            options = options.ssl_client_cert(cert).ssl_client_key(key);
        }
    }
    Ok(options)
}

fn mentions_ssl_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case("ssl-mode")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_table_verifies_the_server_unless_the_url_chose_a_mode() {
        assert!(mentions_ssl_mode("mysql://h/db?ssl-mode=VERIFY_CA"));
        assert!(!mentions_ssl_mode("mysql://h/db?ssl-ca=/x.pem"));
        let files = TlsFiles::new("/etc/ca.pem");
        let options = connect_options("mysql://u:pw@h/db", Some(&files)).unwrap();
        assert!(format!("{options:?}").contains("VerifyIdentity"), "{options:?}");
        let options = connect_options("mysql://u:pw@h/db?ssl-mode=VERIFY_CA", Some(&files)).unwrap();
        assert!(format!("{options:?}").contains("VerifyCa"), "{options:?}");
    }

    #[test]
    fn a_bad_url_is_a_config_error_without_its_password() {
        let e = connect_options("mysql://u:hunter2@h:notaport/db", None).unwrap_err();
        assert!(
            matches!(&e, LockError::Config(m) if m.starts_with("mysql:") && !m.contains("hunter2")),
            "{e:?}"
        );
    }
}
