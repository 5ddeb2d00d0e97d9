//! WebSockets over HTTP/2 (RFC 8441): an extended CONNECT (`:protocol websocket`) on an h2
//! connection is one stream carrying the WebSocket's frames, where HTTP/1.1 would have
//! given the whole connection. The node's Python WebSocket code speaks HTTP/1.1 only, and
//! stays the one implementation (issue 15: WebSockets keep today's Python code): this
//! module translates the handshake and relays the stream.
//!
//! - The stream's request becomes an HTTP/1.1 `Upgrade: websocket` head, with the client's
//!   headers (`sec-websocket-version`, `-protocol`, `-extensions`, cookies ...) and a
//!   `sec-websocket-key` made here (h2 has none: the stream itself is the proof).
//! - The node gets one end of a socket pair with that head, in the same `Upgrade` message
//!   as an HTTP/1.1 hand-off under TLS (`handoff.rs`), and answers on it as it would a client.
//! - Its `101` becomes the stream's `200` (its subprotocol and extensions kept, the
//!   HTTP/1.1-only headers dropped), and from then on the bytes are relayed as they come:
//!   WebSocket frames are the same on both. Any other answer (403 from the app, 400 for a
//!   bad version) is the stream's answer, body included.
//!
//! A connection advertises `SETTINGS_ENABLE_CONNECT_PROTOCOL` (h2.rs); clients that do not
//! use it (most browsers open WebSockets on HTTP/1.1 anyway) are not affected.

use crate::body::GwBody;
use crate::gateway::{self, Resp};
use crate::handoff;
use crate::http::{percent_decode, ConnInfo};
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The node's answer head, at most (the Python gateway's own heads are far smaller).
const HEAD_LIMIT: usize = 16 * 1024;
/// A refusal's body, at most; more is cut (the node sends a short JSON or text).
const BODY_LIMIT: usize = 64 * 1024;
/// How long the node may take to answer the handshake: the app decides when it accepts
/// (an HTTP/1.1 client simply waits), so this only bounds what a stuck one holds here.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a refusal's body may take once its head came.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `req` opens a WebSocket (extended CONNECT with `:protocol websocket`).
pub fn is_websocket<B>(req: &hyper::Request<B>) -> bool {
    if req.method() != hyper::Method::CONNECT {
        return false;
    }
    match req.extensions().get::<hyper::ext::Protocol>() {
        Some(protocol) => protocol.as_str().eq_ignore_ascii_case("websocket"),
        // h2 0.3.13 (Debian bookworm's) checks `:protocol` but does not pass it on: there a
        // CONNECT with a path is an extended one (a plain CONNECT with a path is refused as
        // malformed), and `sec-websocket-version`, which RFC 8441 5 requires, says websocket.
        None => req.uri().path_and_query().is_some() && req.headers().contains_key("sec-websocket-version"),
    }
}

/// Serves one WebSocket stream. `keep` lives as long as the WebSocket does (h2.rs counts
/// the stream as open with it, so the connection is not idle while the socket is).
pub async fn serve<K: Send + 'static>(info: Arc<ConnInfo>, mut req: hyper::Request<hyper::Body>, keep: K) -> Resp {
    let gw = info.gw;
    let host = req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let path = target.split('?').next().unwrap_or("/");
    let Some((svc, _)) = gw.route(&host, &percent_decode(path)) else {
        gw.refused(404);
        return gateway::made(&gw.node_hv, None, 404, "not found", "no service serves this path", None);
    };
    let head = upgrade_head(&target, &host, req.headers());
    if !handoff::fits(&svc.name, head.len()) {
        gw.refused(431);
        return gateway::made(&gw.node_hv, None, 431, "request header fields too large",
            "a WebSocket request's headers exceed one control message", None);
    }
    let Ok((ours, theirs)) = std::os::unix::net::UnixStream::pair() else {
        return unavailable(gw, "the gateway could not make a socket for the WebSocket");
    };
    let Ok(mut ours) = ours.set_nonblocking(true).and_then(|_| tokio::net::UnixStream::from_std(ours)) else {
        return unavailable(gw, "the gateway could not make a socket for the WebSocket");
    };
    if !handoff::send(gw.control_fd, &handoff::message(&info, &svc.name, &head, "2"), theirs.into()) {
        return unavailable(gw, "the node did not take the WebSocket");
    }
    let Ok(Ok(answer)) = tokio::time::timeout(ANSWER_TIMEOUT, read_answer(&mut ours)).await else {
        return unavailable(gw, "the node did not answer the WebSocket handshake");
    };
    if answer.status != 101 {
        let mut resp = answer.response();
        if let Ok(Ok(body)) = tokio::time::timeout(BODY_TIMEOUT, read_body(&mut ours, answer.length, answer.rest)).await {
            *resp.body_mut() = GwBody::full(Bytes::from(body));
        }
        return resp;
    }
    let upgrade = hyper::upgrade::on(&mut req);
    let mut resp = answer.response();
    let rest = answer.rest;
    *resp.status_mut() = hyper::StatusCode::OK;
    tokio::spawn(async move {
        if let Ok(stream) = upgrade.await {
            handoff::pump(stream, ours, rest).await;
        }
        drop(keep);
    });
    resp
}

fn unavailable(gw: &crate::gateway::Gateway, detail: &str) -> Resp {
    gw.refused(503);
    gateway::made(&gw.node_hv, None, 503, "service unavailable", detail, Some(1))
}

/// Headers HTTP/1.1 has for the connection, not the request: never copied across.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "host" | "connection" | "upgrade" | "keep-alive" | "proxy-connection" | "te" | "transfer-encoding"
            | "content-length" | "sec-websocket-key" | "sec-websocket-accept"
    )
}

/// The HTTP/1.1 request an h2 WebSocket stream would have been.
fn upgrade_head(target: &str, host: &str, headers: &hyper::HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    head.extend_from_slice(b"\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: ");
    head.extend_from_slice(websocket_key().as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if hop_by_hop(name.as_str()) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A fresh `sec-websocket-key`: 16 random bytes in base64 (RFC 6455 4.1).
fn websocket_key() -> String {
    let state = RandomState::new();
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    base64(&bytes)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity((data.len() + 2) / 3 * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The node's answer to the handshake: status, the headers worth passing on, its
/// `content-length` if any, and the bytes read past the head.
struct Answer {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    length: Option<usize>,
    rest: Vec<u8>,
}

impl Answer {
    fn response(&self) -> Resp {
        let mut resp = hyper::Response::new(GwBody::full(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
        for (name, value) in &self.headers {
            resp.headers_mut().append(name.clone(), value.clone());
        }
        resp
    }
}

async fn read_answer<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut storage = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut storage);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(end)) => {
                let status = parsed.code.unwrap_or(502);
                let mut headers = Vec::new();
                let mut length = None;
                for h in parsed.headers.iter() {
                    let name = h.name.to_ascii_lowercase();
                    if name == "content-length" {
                        length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                    }
                    if hop_by_hop(&name) {
                        continue;
                    }
                    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(h.value)) {
                        headers.push((n, v));
                    }
                }
                return Ok(Answer { status, headers, length, rest: buf[end..].to_vec() });
            }
            Ok(httparse::Status::Partial) if buf.len() < HEAD_LIMIT => {}
            Ok(httparse::Status::Partial) => return Err(bad("the node's answer head is too large")),
            Err(_) => return Err(bad("the node's answer is not HTTP/1.1")),
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("the node closed before answering"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A refusal's body: `length` bytes when said, else what comes until the node closes.
async fn read_body<S: AsyncRead + Unpin>(io: &mut S, length: Option<usize>, mut body: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let want = length.unwrap_or(BODY_LIMIT).min(BODY_LIMIT);
    let mut chunk = [0u8; 4096];
    while body.len() < want {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(want);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(websocket_key().len(), 24);
    }

    #[test]
    fn the_head_carries_the_client_headers_but_not_the_connection_ones() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a.test"));
        headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
        headers.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        let head = String::from_utf8(upgrade_head("/ws?x=1", "a.test", &headers)).unwrap();
        assert!(head.starts_with("GET /ws?x=1 HTTP/1.1\r\nhost: a.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"));
        assert!(head.contains("\r\nsec-websocket-version: 13\r\n") && head.contains("\r\nsec-websocket-protocol: chat\r\n"));
        assert_eq!(head.matches("host:").count(), 1);
        assert!(!head.contains("te: trailers") && head.ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn the_answer_keeps_its_status_headers_and_what_followed() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: x\r\nSec-WebSocket-Protocol: chat\r\n\r\n\x81\x02hi";
        let answer = read_answer(&mut &raw[..]).await.unwrap();
        assert_eq!(answer.status, 101);
        assert_eq!(answer.headers.len(), 1);
        assert_eq!(answer.headers[0].0, "sec-websocket-protocol");
        assert_eq!(answer.rest, b"\x81\x02hi");
        let raw = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\n\r\nno!!trailing";
        let answer = read_answer(&mut &raw[..]).await.unwrap();
        assert_eq!((answer.status, answer.length), (403, Some(4)));
        let body = read_body(&mut &b""[..], answer.length, answer.rest.clone()).await.unwrap();
        assert_eq!(body, b"no!!");
    }
}
