//! HTTP/2 to clients: hyper 0.14's h2 server on a TLS stream whose ALPN chose `h2`.
//! Each stream is one call of the transport-independent request path (`http::handle`:
//! route, admit, Req frame, answer), so HTTP/2 gets the same placement, limits, errors and
//! bodies under the credit window as HTTP/1.1; hyper drops connection-specific headers
//! from the answers. An HTTP/2 request names its host in `:authority`: it becomes the
//! `host` header the app sees (as HTTP/1.1 would have sent it). Shutdown: GOAWAY (hyper's graceful shutdown), the open streams finish.

use crate::http::{self, ConnInfo};
use hyper::server::conn::Http;
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

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
    let limit = info.gw.settings.header_limit.max(8192) as u32;
    let mut h2 = Http::new().with_executor(Spawn);
    h2.http2_only(true).http2_max_concurrent_streams(MAX_STREAMS).http2_max_header_list_size(limit);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::Body>| {
        with_host(&mut req);
        http::handle(info.clone(), req)
    });
    let conn = h2.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
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
