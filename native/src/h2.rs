//! HTTP/2 to clients: hyper 0.14's h2 server on a TLS stream whose ALPN chose `h2`.
//! Each stream is one call of the transport-independent request path (`http::handle`:
//! route, admit, Req frame, answer), so HTTP/2 gets the same placement, limits, errors and
//! bodies under the credit window as HTTP/1.1; hyper drops connection-specific headers
//! from the answers. An HTTP/2 request names its host in `:authority`: it becomes the
//! `host` header the app sees (as HTTP/1.1 would have sent it). A WebSocket stream
//! (extended CONNECT, RFC 8441) goes to `h2ws.rs` instead.
//!
//! Idle: a connection with no open stream and no byte either way for the keep-alive
//! timeout gets GOAWAY (hyper's graceful shutdown), as an idle HTTP/1.1 connection is
//! closed; a stream is open from its request until its answer's body is sent or dropped
//! (`Open`, carried by the body), so a long streamed answer never counts as idle. The
//! node's shutdown is the same GOAWAY; open streams finish.

use crate::access;
use crate::gateway::Gateway;
use bytes::Buf;
use crate::http::{self, ConnInfo};
use http_body::Body as HttpBody;
use hyper::server::conn::Http;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Runs hyper's h2 streams as tokio tasks (hyper's default needs its `tcp` feature).
#[derive(Clone, Copy)]
struct Spawn;

impl<F> hyper::rt::Executor<F> for Spawn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// Concurrent streams per connection (what a client may have in flight at once).
const MAX_STREAMS: u32 = 128;

pub async fn serve<S>(io: S, info: Arc<ConnInfo>, mut shutdown: tokio::sync::watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let gw = info.gw;
    let limit = gw.settings.header_limit.max(8192) as u32;
    let mut h2 = Http::new().with_executor(Spawn);
    h2.http2_only(true).http2_max_concurrent_streams(MAX_STREAMS).http2_max_header_list_size(limit);
    h2.http2_enable_connect_protocol(); // WebSockets over HTTP/2 (RFC 8441): h2ws.rs
    let idle = Arc::new(IdleState { streams: AtomicUsize::new(0), last: AtomicU64::new(millis(gw)) });
    let streams = idle.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::Body>| {
        with_host(&mut req);
        let open = Open::new(streams.clone());
        let websocket = crate::h2ws::is_websocket(&req).then(|| Open::new(streams.clone()));
        let info = info.clone();
        async move {
            let mut resp = match websocket {
                // RFC 8441: the stream is a WebSocket, open (counted) as long as it is
                Some(socket) => crate::h2ws::serve(info, req, socket).await,
                None => http::handle(info, req).await?, // Infallible: `let Ok(..) =` would need Rust 1.82
            };
            let access = resp.extensions_mut().remove::<access::Record>();
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _open: open, access, gw }))
        }
    });
    let conn = h2.serve_connection(Touch { io, idle: idle.clone(), gw }, service);
    tokio::pin!(conn);
    let keepalive = gw.settings.keepalive_timeout;
    let period = Duration::from_secs_f64(if keepalive > 0.0 { (keepalive / 4.0).clamp(0.05, 60.0) } else { 3600.0 });
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                let quiet = millis(gw).saturating_sub(idle.last.load(Ordering::Relaxed)) as f64 / 1000.0;
                if keepalive > 0.0 && idle.streams.load(Ordering::Relaxed) == 0 && quiet >= keepalive {
                    break; // idle past the keep-alive timeout, as an HTTP/1.1 connection would be
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown(); // GOAWAY; open streams finish
    let _ = conn.await;
}

/// What the idle check reads: streams open (a request not yet fully answered) and the
/// last time a byte went either way (ms since the gateway's epoch).
struct IdleState {
    streams: AtomicUsize,
    last: AtomicU64,
}

fn millis(gw: &Gateway) -> u64 {
    gw.epoch.elapsed().as_millis() as u64
}

/// One open stream: counted from the request until its answer's body is done or dropped.
struct Open(Arc<IdleState>);

impl Open {
    fn new(idle: Arc<IdleState>) -> Open {
        idle.streams.fetch_add(1, Ordering::Relaxed);
        Open(idle)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body that keeps its stream counted as open while hyper sends it, and its
/// access-log record (access.rs), if the log is on, until the stream ends: sent or reset.
struct Tracked<B> {
    body: B,
    _open: Open,
    access: Option<access::Record>,
    gw: &'static Gateway,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_data(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<B::Data, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_data(cx);
        if let (Poll::Ready(Some(Ok(data))), Some(rec)) = (&polled, this.access.as_deref_mut()) {
            rec.1.bytes += data.remaining() as u64;
        }
        polled
    }

    fn poll_trailers(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Option<::http::HeaderMap>, B::Error>> {
        Pin::new(&mut self.get_mut().body).poll_trailers(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let Some(rec) = self.access.take() {
            access::push(self.gw, &rec.0, &rec.1);
        }
    }
}

/// The connection's stream, noting when bytes last moved (pings and window updates too).
struct Touch<S> {
    io: S,
    idle: Arc<IdleState>,
    gw: &'static Gateway,
}

impl<S> Touch<S> {
    fn touch(&self) {
        self.idle.last.store(millis(self.gw), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Touch<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touch<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        result
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// `:authority` as the `host` header, unless the client sent one.
fn with_host(req: &mut hyper::Request<hyper::Body>) {
    if req.headers().contains_key(hyper::header::HOST) {
        return;
    }
    let Some(value) = req.uri().authority().and_then(|a| hyper::header::HeaderValue::from_str(a.as_str()).ok()) else { return };
    req.headers_mut().insert(hyper::header::HOST, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_becomes_the_host_header() {
        let mut req = hyper::Request::get("https://example.test:8443/x").body(hyper::Body::empty()).unwrap();
        with_host(&mut req);
        assert_eq!(req.headers()["host"], "example.test:8443");
        let mut req = hyper::Request::get("https://a.test/x").header("host", "b.test").body(hyper::Body::empty()).unwrap();
        with_host(&mut req);
        assert_eq!(req.headers()["host"], "b.test");
    }
}
