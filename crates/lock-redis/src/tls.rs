//! TLS to the servers (feature `tls`): the rustls client configuration that
//! [`RedisConfig::tls`](crate::RedisConfig::tls) describes, used for every connection of a
//! provider (each Redlock master, each cluster node, the pub/sub connection).

use std::sync::Arc;

use fred::types::config::TlsConfig;
use lock_core::tls::TlsFiles;
use lock_core::{LockError, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::NAME;

fn config_error(why: impl std::fmt::Display) -> LockError {
    LockError::Config(format!("{NAME}: TLS: {why}"))
}

/// The certificates of a PEM file (by path: never its content in a message).
fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = TlsFiles::read(NAME, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| config_error(format!("{} holds no readable PEM certificate", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The TLS settings for `files`: trust their CA (else the system's), present their client
/// certificate if any, verify their server name if set (else the host of each URL).
pub(crate) fn client_config(files: &TlsFiles) -> Result<TlsConfig> {
    files.validate(NAME)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| config_error(format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(config_error("no CA given and none found in the system's trust store"));
            }
        }
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(config_error)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match &files.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|_| config_error(format!("`{name}` is not a valid server name")))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(VerifyAs { inner: verifier, name }))
        }
        None => builder.with_webpki_verifier(verifier),
    };
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let pem = TlsFiles::read(NAME, key)?;
            // The parser's error could quote the file: only the path is named.
            let key_der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|_| config_error(format!("{} holds no readable PEM private key", key.display())))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|_| {
                config_error(format!(
                    "the key {} does not fit the certificate {}",
                    key.display(),
                    cert.display()
                ))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConfig::from(config))
}

/// Verifies the server's certificate for a configured name instead of the host connected to
/// (a server reached by address, or through a tunnel, whose certificate names its service).
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
