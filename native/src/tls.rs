//! TLS termination (rustls 0.20, tokio-rustls 0.23): the node's `Tls` message carries a
//! PEM certificate chain and key; `set` swaps the server config that *new* connections
//! are accepted with (a SIGHUP to the node re-sends the files). A connection keeps the
//! config it was accepted with, so a reload drops nothing. ALPN offers `h2` then
//! `http/1.1`: `accept` says which one the client picked (no ALPN: HTTP/1.1).
//!
//! `anycore-gateway --check-tls CERT KEY` loads the two files as `set` would and prints
//! one line on failure: the CLI runs it before anything starts.

use parking_lot::RwLock;
use rustls::{Certificate, PrivateKey, ServerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

static CONFIG: RwLock<Option<Arc<ServerConfig>>> = parking_lot::const_rwlock(None);

/// The config new connections get; None: plain TCP.
pub fn current() -> Option<Arc<ServerConfig>> {
    CONFIG.read().clone()
}

/// Loads `cert`/`key` (PEM) and makes it the config of new connections; on error the
/// previous config stays.
pub fn set(cert: &[u8], key: &[u8]) -> Result<(), String> {
    let config = load(cert, key)?;
    *CONFIG.write() = Some(Arc::new(config));
    Ok(())
}

pub fn load(cert: &[u8], key: &[u8]) -> Result<ServerConfig, String> {
    let certs = rustls_pemfile::certs(&mut &cert[..]).map_err(|e| format!("the certificate file is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file has no CERTIFICATE block".into());
    }
    let mut key_der = None;
    let mut rd = key;
    loop {
        match rustls_pemfile::read_one(&mut rd).map_err(|e| format!("the key file is not PEM: {e}"))? {
            Some(rustls_pemfile::Item::RSAKey(k) | rustls_pemfile::Item::PKCS8Key(k) | rustls_pemfile::Item::ECKey(k)) => {
                key_der = Some(k);
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    let key_der = key_der.ok_or("the key file has no PRIVATE KEY block (PKCS#8, RSA or EC)")?;
    let mut config = ServerConfig::builder()
        .with_safe_defaults()
        .with_no_client_auth()
        .with_single_cert(certs.into_iter().map(Certificate).collect(), PrivateKey(key_der))
        .map_err(|e| format!("the key does not go with the certificate, or is of a kind rustls does not take: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The handshake, within `timeout` seconds (the header timeout; 10 s if 0). `Some((stream,
/// true))`: the client chose h2. None: it failed or took too long (the connection closes).
pub async fn accept(config: Arc<ServerConfig>, stream: TcpStream, timeout: f64) -> Option<(TlsStream<TcpStream>, bool)> {
    let timeout = Duration::from_secs_f64(if timeout > 0.0 { timeout.min(3600.0) } else { 10.0 });
    let tls = tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(stream)).await.ok()?.ok()?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    Some((tls, h2))
}

/// `--check-tls CERT KEY`: exit status 0, or 2 with one line on stderr.
pub fn check(cert: &str, key: &str) -> i32 {
    let read = |path: &str, what: &str| std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {path}: {e}"));
    let result = read(cert, "certificate").and_then(|c| read(key, "key").map(|k| (c, k))).and_then(|(c, k)| load(&c, &k).map(|_| ()));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(load(b"", b"").unwrap_err().contains("no CERTIFICATE"));
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(load(cert, b"nothing").unwrap_err().contains("no PRIVATE KEY"));
        let key = b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        assert!(load(cert, key).unwrap_err().contains("does not go with"));
        assert!(current().is_none());
    }
}
