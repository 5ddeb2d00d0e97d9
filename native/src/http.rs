//! The client side: accept loops on the node's listening sockets (each connection is
//! served by `h1::serve`), and the request path every transport shares — `submit`:
//! route, admit, encode the Req frame, and the answer to wait for. HTTP/1.1 (`h1/`)
//! calls it with a head parsed in place; HTTP/2 (hyper, `h2.rs`) through `handle`.
//!
//! Limits: `max_connections` (a semaphore; past it a new connection gets 503 and is
//! closed at once, as under the Python gateway);
//! the head's limits are `parse.rs`'s. A request whose client goes away before its
//! answer (its `Pending` is dropped) is unqueued or cancelled on its worker.

use crate::body::ReqBody;
use crate::frames::{self, w_array, w_bin, w_bool, w_nil, w_str, w_uint};
use crate::gateway::{self, Gateway, Resp, Service};
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::io::OwnedFd;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n";

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
            // Past max_connections: said in one write (a fresh socket's buffer takes it), closed.
            if let Ok(mut stream) = stream.into_std() {
                let _ = std::io::Write::write(&mut stream, FULL);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = crate::tls::current();
        let info = Arc::new(conn_info(gw, peer, local, if tls.is_some() { "https" } else { "http" }));
        tokio::spawn(async move {
            // Under TLS: the handshake, then ALPN picks HTTP/2 (h2.rs) or HTTP/1.1, whose
            // WebSocket hand-off is relayed (the TLS session lives here: handoff::relay).
            match tls {
                None => crate::h1::serve(stream, info, Some(tcp_fd)).await,
                Some(config) => match crate::tls::accept(config, stream, gw.settings.header_timeout).await {
                    Some((stream, true)) => crate::h2::serve(stream, info, gw.shutdown.subscribe()).await,
                    Some((stream, false)) => crate::h1::serve(stream, info, Some(crate::handoff::relay)).await,
                    None => {}
                },
            }
            drop(permit);
        });
    }
}

/// A TCP connection's socket, for the WebSocket hand-off to the node.
fn tcp_fd(stream: TcpStream) -> Option<OwnedFd> {
    stream.into_std().ok().map(OwnedFd::from)
}

pub fn conn_info(gw: &'static Gateway, peer: SocketAddr, local: Option<SocketAddr>, scheme: &'static str) -> ConnInfo {
    let (server_ip, server_port) = local.map_or((String::new(), 0), |a| (a.ip().to_string(), a.port()));
    ConnInfo { gw, client_ip: peer.ip().to_string(), client_port: peer.port(), server_ip, server_port, scheme }
}

/// A request's headers, whatever parsed them.
pub trait HeaderList {
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8]));
}

impl HeaderList for &[httparse::Header<'_>] {
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for h in self.iter() {
            f(h.name.as_bytes(), h.value);
        }
    }
}

impl HeaderList for http::HeaderMap {
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in self.iter() {
            f(name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// One request as the request path needs it, transport aside.
pub struct Request<'a> {
    pub method: &'a str,
    /// The target's path as sent (percent-encoded) and its query.
    pub raw_path: &'a str,
    pub query: &'a str,
    pub host: &'a str,
    pub version: &'static str,
    pub headers: &'a dyn HeaderList,
    /// Body bytes sent with the Req frame: the whole body when `more` is false.
    pub body: &'a [u8],
    /// More body follows in Body frames (read through the `ReqBody` given to `submit`).
    pub more: bool,
    /// Bytes admitted against max_body and the queue (Content-Length, or the body known).
    pub size: u64,
    /// The request's id (`requestid.rs`): the worker gets it as the one `x-request-id`.
    pub request_id: &'a [u8],
    /// Leave `traceparent` and `tracestate` out (the traceparent was invalid).
    pub drop_trace: bool,
}

/// Whether a header the client sent reaches the worker as it came (`x-request-id` is
/// replaced by the request's id; an invalid trace context is dropped).
fn passed_on(name: &[u8], drop_trace: bool) -> bool {
    match name.len() {
        12 => !name.eq_ignore_ascii_case(b"x-request-id"),
        11 => !(drop_trace && name.eq_ignore_ascii_case(b"traceparent")),
        10 => !(drop_trace && name.eq_ignore_ascii_case(b"tracestate")),
        _ => true,
    }
}

pub enum Submitted {
    /// The gateway answered at once (no route, stopped, too large, overloaded).
    Answered(Resp),
    Pending(Pending),
}

/// A request placed or queued: its answer comes on `rx`. Dropped before the answer
/// arrived (`done`): the client left, and the request is unqueued or cancelled.
pub struct Pending {
    pub rx: oneshot::Receiver<Resp>,
    svc: Option<Arc<Service>>,
    pub id: u64,
    #[allow(dead_code)] // used by `answer`
    gw: &'static Gateway,
}

impl Pending {
    /// The answer is in hand: dropping this no longer cancels.
    pub fn done(&mut self) {
        self.svc = None;
    }

    pub fn service(&self) -> Option<&Arc<Service>> {
        self.svc.as_ref()
    }

    #[allow(dead_code)] // used by `handle`
    pub async fn answer(mut self) -> Resp {
        let resp = (&mut self.rx).await;
        self.done();
        resp.unwrap_or_else(|_| dropped(self.gw))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(svc) = self.svc.take() {
            svc.cancel(self.id);
        }
    }
}

/// The answer when a request's reply went away unanswered (cannot happen: every path
/// that drops a reply answers it first).
pub fn dropped(gw: &Gateway) -> Resp {
    gateway::made(&gw.node_hv, None, 502, "no response", "the request was dropped by the gateway", None)
}

pub fn percent_decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
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
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn w_bin_lower(out: &mut Vec<u8>, b: &[u8]) {
    let _ = rmp::encode::write_bin_len(out, b.len() as u32);
    out.extend(b.iter().map(u8::to_ascii_lowercase));
}

/// The request path: route `req`, admit it, and encode its Req frame straight into the
/// chosen worker's buffer (or the queue). `body` reads what `more` says is still to come.
pub fn submit(info: &ConnInfo, req: &Request, body: Option<ReqBody>) -> Submitted {
    let gw = info.gw;
    let path = percent_decode(req.raw_path);
    let path: &str = &path;
    let Some((svc, prefix_len)) = gw.route(req.host, path) else {
        return Submitted::Answered(gw.unrouted(req.host, path)); // 404, or 503 while starting; counted for /metrics
    };
    let root_path = &path[..prefix_len];
    let headers = req.headers;
    let (scheme, client_ip, client_port) =
        crate::proxy::resolve(info.scheme, &info.client_ip, info.client_port, &|f| headers.each(f));
    let write = |out: &mut Vec<u8>, id: u64| {
        frames::frame(out, |o| {
            w_array(o, 15);
            w_uint(o, frames::REQ as u64);
            w_uint(o, id);
            w_str(o, req.method);
            w_str(o, path);
            w_bin(o, req.raw_path.as_bytes());
            w_bin(o, req.query.as_bytes());
            let mut kept = 0u32;
            headers.each(&mut |name, _| kept += passed_on(name, req.drop_trace) as u32);
            w_array(o, kept + 1);
            headers.each(&mut |name, value| {
                if passed_on(name, req.drop_trace) {
                    w_array(o, 2);
                    w_bin_lower(o, name);
                    w_bin(o, value);
                }
            });
            w_array(o, 2);
            w_bin(o, crate::requestid::HEADER.as_bytes());
            w_bin(o, req.request_id);
            w_str(o, req.version);
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
            w_bin(o, req.body);
            w_bool(o, req.more);
            frames::w_remaining(o); // set as the request starts on a worker (gateway::Core::start)
        })
    };
    let (tx, rx) = oneshot::channel();
    match gateway::place(gw, &svc, req.size, write, if req.more { body } else { None }, tx) {
        Ok(id) => Submitted::Pending(Pending { rx, svc: Some(svc), id, gw }),
        Err(resp) => Submitted::Answered(resp),
    }
}

/// A request as hyper gives it (HTTP/2): the same path, its body pumped by a task.
pub async fn handle(info: Arc<ConnInfo>, req: http::Request<hyper::Body>) -> Result<Resp, Infallible> {
    use hyper::body::HttpBody as _;
    let gw = info.gw;
    let (parts, body) = req.into_parts();
    let limit = gw.settings.header_limit;
    if limit > 0 {
        let mut size = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
        for (name, value) in parts.headers.iter() {
            size += name.as_str().len() + value.len() + 4;
        }
        if size > limit {
            let detail = format!("request line and headers exceed {limit} bytes");
            gw.refused(431);
            return Ok(gateway::made(&gw.node_hv, None, 431, "request header fields too large", &detail, None));
        }
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let size = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let more = !body.is_end_stream();
    let version = match parts.version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    };
    let given = parts.headers.get(crate::requestid::HEADER).and_then(|v| crate::requestid::accept(v.as_bytes()));
    let rid = crate::requestid::Rid::of(given);
    let drop_trace = parts.headers.get("traceparent").is_some_and(|v| !crate::requestid::valid_traceparent(v.as_bytes()));
    // Built and submitted in a block: `req` borrows the headers as `&dyn HeaderList`, which
    // must not live across the await (the future must be Send for hyper's h2 server).
    let submitted = {
        let req = Request {
            method: parts.method.as_str(),
            raw_path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            host,
            version,
            headers: &parts.headers,
            body: b"",
            more,
            size,
            request_id: rid.as_bytes(),
            drop_trace,
        };
        submit(&info, &req, more.then_some(ReqBody::Hyper(body)))
    };
    let record = crate::access::enabled().then(|| {
        let header = |name| parts.headers.get(name).map(|v: &http::HeaderValue| v.as_bytes().to_vec());
        let (referer, agent) = (header(http::header::REFERER), header(http::header::USER_AGENT));
        let path = parts.uri.path();
        let query = parts.uri.query().unwrap_or("");
        let method = parts.method.as_str();
        crate::access::Head::new(gw, host, method, path, query, version, referer, agent, &info.client_ip, rid.as_bytes())
    });
    let mut resp = match submitted {
        Submitted::Answered(resp) => resp,
        Submitted::Pending(pending) => pending.answer().await,
    };
    if let Ok(value) = http::HeaderValue::from_bytes(rid.as_bytes()) {
        resp.headers_mut().insert(crate::requestid::HEADER, value);
    }
    if let Some(head) = record {
        // Taken by the transport, which counts the body's bytes and pushes it at the end (h2.rs).
        let (mut parts, body) = resp.into_parts();
        let answer = crate::access::Answer::of(gw, &parts);
        parts.extensions.insert::<crate::access::Record>(Box::new((head, answer)));
        resp = Resp::from_parts(parts, body);
    }
    Ok(resp)
}
