//! The client side: accept loops on the node's listening sockets, hyper 0.14 HTTP/1.1
//! connections (keep-alive, pipelining, chunked and streaming bodies, 100-continue sent
//! by hyper when the body is first read), and the per-request path: route, admit,
//! encode the Req frame, wait for the answer.
//!
//! Limits: `max_connections` (a semaphore; past it a new connection is closed at once),
//! `header_limit` (hyper's read buffer: a head past it is answered 431; hyper's minimum
//! is 8 KiB, and it refuses more than 100 headers with 431 too). A request whose client
//! goes away before its answer (hyper drops its future) is unqueued or cancelled on its
//! worker.

use crate::frames::{self, w_array, w_bin, w_bool, w_nil, w_str, w_uint};
use crate::gateway::{self, Gateway, Resp, Service};
use http::Request;
use hyper::body::HttpBody as _;
use hyper::server::conn::Http;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct ConnInfo {
    pub gw: &'static Gateway,
    pub client_ip: String,
    pub client_port: u16,
    pub server_ip: String,
    pub server_port: u16,
    /// "http", or "https" under TLS (the Req frame's scheme, unless proxy headers say otherwise).
    pub scheme: &'static str,
}

pub async fn accept_loop(gw: &'static Gateway, listener: std::net::TcpListener) {
    let Ok(listener) = listener.set_nonblocking(true).and_then(|_| TcpListener::from_std(listener)) else { return };
    let local = listener.local_addr().ok();
    let mut http = Http::new();
    http.http1_only(true)
        .http1_keep_alive(true)
        .pipeline_flush(true)
        .max_buf_size(gw.settings.header_limit.max(8192));
    let http = Arc::new(http);
    let mut shutdown = gw.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await; // EMFILE and the like
            continue;
        };
        let Ok(permit) = gw.connections.clone().try_acquire_owned() else {
            drop(stream); // past max_connections
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = crate::tls::current();
        let info = Arc::new(ConnInfo { scheme: if tls.is_some() { "https" } else { "http" }, ..conn_info(gw, peer, local) });
        let http = http.clone();
        let shutdown = gw.shutdown.subscribe();
        tokio::spawn(async move {
            // Under TLS: the handshake, then ALPN picks HTTP/2 (h2.rs) or HTTP/1.1.
            match tls {
                None => serve_h1(stream, info, http, shutdown).await,
                Some(config) => match crate::tls::accept(config, stream, gw.settings.header_timeout).await {
                    Some((stream, true)) => crate::h2::serve(stream, info, shutdown).await,
                    Some((stream, false)) => serve_h1(stream, info, http, shutdown).await,
                    None => {}
                },
            }
            drop(permit);
        });
    }
}

async fn serve_h1<S>(stream: S, info: Arc<ConnInfo>, http: Arc<Http>, mut shutdown: tokio::sync::watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(info.clone(), req));
    let conn = http.serve_connection(stream, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn conn_info(gw: &'static Gateway, peer: SocketAddr, local: Option<SocketAddr>) -> ConnInfo {
    let (server_ip, server_port) = local.map_or((String::new(), 0), |a| (a.ip().to_string(), a.port()));
    ConnInfo { gw, client_ip: peer.ip().to_string(), client_port: peer.port(), server_ip, server_port, scheme: "http" }
}

/// Disarmed once the answer is in hand; dropped armed = the client left first.
struct CancelGuard {
    svc: Option<Arc<Service>>,
    id: u64,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(svc) = self.svc.take() {
            svc.cancel(self.id);
        }
    }
}

fn percent_decode(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn handle(info: Arc<ConnInfo>, req: Request<hyper::Body>) -> Result<Resp, Infallible> {
    let gw = info.gw;
    let (parts, body) = req.into_parts();
    // hyper enforces its buffer size only while a head is incomplete: count exactly here
    // (request line + "name: value\r\n" per header), as the Python gateway's 431.
    let limit = gw.settings.header_limit;
    if limit > 0 {
        let mut size = parts.method.as_str().len() + parts.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 11;
        for (name, value) in parts.headers.iter() {
            size += name.as_str().len() + value.len() + 4;
        }
        if size > limit {
            let detail = format!("request line and headers exceed {limit} bytes");
            return Ok(gateway::made(&gw.node_hv, None, 431, "request header fields too large", &detail, None));
        }
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let raw_path = parts.uri.path();
    let decoded;
    let path: &str = if raw_path.contains('%') {
        decoded = percent_decode(raw_path);
        &decoded
    } else {
        raw_path
    };
    let Some((svc, prefix_len)) = gw.route(host, path) else {
        return Ok(gw.unrouted(host, path)); // 404, or 503 while starting; counted for /metrics
    };
    let size = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let has_body = !body.is_end_stream();
    let method = parts.method.as_str();
    let query = parts.uri.query().unwrap_or("").as_bytes();
    let version = match parts.version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    };
    let root_path = &path[..prefix_len];
    let headers = &parts.headers;
    let each = |f: &mut dyn FnMut(&[u8], &[u8])| headers.iter().for_each(|(n, v)| f(n.as_str().as_bytes(), v.as_bytes()));
    let (scheme, client_ip, client_port) = crate::proxy::resolve(info.scheme, &info.client_ip, info.client_port, &each);
    let write = |out: &mut Vec<u8>, id: u64| {
        frames::frame(out, |o| {
            w_array(o, 14);
            w_uint(o, frames::REQ as u64);
            w_uint(o, id);
            w_str(o, method);
            w_str(o, path);
            w_bin(o, raw_path.as_bytes());
            w_bin(o, query);
            w_array(o, headers.len() as u32);
            for (name, value) in headers.iter() {
                w_array(o, 2);
                w_bin(o, name.as_str().as_bytes());
                w_bin(o, value.as_bytes());
            }
            w_str(o, version);
            w_str(o, scheme);
            w_array(o, 2);
            w_str(o, &client_ip);
            w_uint(o, client_port as u64);
            if info.server_ip.is_empty() {
                w_nil(o);
            } else {
                w_array(o, 2);
                w_str(o, &info.server_ip);
                w_uint(o, info.server_port as u64);
            }
            w_str(o, root_path);
            w_bin(o, b"");
            w_bool(o, has_body);
        })
    };
    let (tx, rx) = oneshot::channel();
    let id = match gateway::place(gw, &svc, size, write, has_body.then_some(body), tx) {
        Ok(id) => id,
        Err(resp) => return Ok(resp),
    };
    let mut guard = CancelGuard { svc: Some(svc), id };
    let resp = match rx.await {
        Ok(resp) => resp,
        Err(_) => gateway::made(&gw.node_hv, None, 502, "no response", "the request was dropped by the gateway", None),
    };
    guard.svc = None;
    Ok(resp)
}

