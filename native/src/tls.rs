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
    let key = PrivateKey(key_der.ok_or("the key file has no PRIVATE KEY block (PKCS#8, RSA or EC)")?);
    key_matches(&certs[0], &key)?;
    let mut config = ServerConfig::builder()
        .with_safe_defaults()
        .with_no_client_auth()
        .with_single_cert(certs.into_iter().map(Certificate).collect(), key)
        .map_err(|e| format!("rustls refuses the certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// rustls takes any key it can parse, even another certificate's (every handshake would
/// then fail): sign a message with the key and verify it with the certificate's public key.
fn key_matches(cert: &[u8], key: &PrivateKey) -> Result<(), String> {
    use rustls::SignatureScheme as S;
    let schemes = [
        (S::ECDSA_NISTP256_SHA256, &webpki::ECDSA_P256_SHA256),
        (S::ECDSA_NISTP384_SHA384, &webpki::ECDSA_P384_SHA384),
        (S::ED25519, &webpki::ED25519),
        (S::RSA_PSS_SHA256, &webpki::RSA_PSS_2048_8192_SHA256_LEGACY_KEY),
    ];
    let signing = rustls::sign::any_supported_type(key)
        .map_err(|_| "the key is of a kind rustls does not take (RSA of 2048 bits or more, ECDSA P-256 or P-384, Ed25519)")?;
    let offered: Vec<S> = schemes.iter().map(|s| s.0).collect();
    let signer = signing.choose_scheme(&offered).ok_or("the key cannot sign with any scheme TLS offers")?;
    let Some(alg) = schemes.iter().find(|s| s.0 == signer.scheme()).map(|s| s.1) else { return Err("the key's signature scheme is unknown".into()) };
    let message = b"anycore-gateway: does this key go with this certificate?";
    let signature = signer.sign(message).map_err(|e| format!("the key cannot sign: {e}"))?;
    let leaf = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("the first certificate cannot be read: {e:?}"))?;
    leaf.verify_signature(alg, message, &signature)
        .map_err(|_| "the key does not go with the certificate (the first CERTIFICATE block of the file)".to_string())
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

    // Test-only certificates and keys (openssl req -x509 ...; never used outside the tests).
    const CERT: &[u8] = include_bytes!("testdata/cert.pem");
    const KEY: &[u8] = include_bytes!("testdata/key.pem");
    const SEC1_KEY: &[u8] = include_bytes!("testdata/sec1-key.pem");
    const OTHER_KEY: &[u8] = include_bytes!("testdata/other-key.pem");
    const RSA_CERT: &[u8] = include_bytes!("testdata/rsa-cert.pem");
    const RSA_KEY: &[u8] = include_bytes!("testdata/rsa-key.pem");
    const RSA_PKCS1_KEY: &[u8] = include_bytes!("testdata/rsa-pkcs1-key.pem");

    #[test]
    fn a_certificate_loads_with_its_own_key_in_any_pem_form_and_offers_h2() {
        let config = load(CERT, KEY).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        load(RSA_CERT, RSA_KEY).unwrap();
        load(RSA_CERT, RSA_PKCS1_KEY).unwrap();
        let both: Vec<u8> = [CERT, KEY].concat(); // one file with the chain and the key
        load(&both, &both).unwrap();
        assert!(load(CERT, SEC1_KEY).is_ok(), "{:?}", load(CERT, SEC1_KEY).err());
    }

    #[test]
    fn another_certificates_key_or_garbage_is_refused_with_a_reason() {
        assert!(load(CERT, OTHER_KEY).unwrap_err().contains("does not go with the certificate"));
        assert!(load(CERT, RSA_KEY).unwrap_err().contains("does not go with the certificate"));
        assert!(load(b"", KEY).unwrap_err().contains("no CERTIFICATE"));
        assert!(load(CERT, b"nothing").unwrap_err().contains("no PRIVATE KEY"));
        let key = b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        assert!(load(CERT, key).unwrap_err().contains("kind rustls does not take"));
    }

    #[test]
    fn set_keeps_the_previous_config_when_the_new_one_is_refused() {
        set(CERT, KEY).unwrap();
        let first = current().unwrap();
        assert!(set(CERT, OTHER_KEY).is_err());
        assert!(Arc::ptr_eq(&first, &current().unwrap()));
        set(RSA_CERT, RSA_KEY).unwrap();
        assert!(!Arc::ptr_eq(&first, &current().unwrap()));
    }
}
