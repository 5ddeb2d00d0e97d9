//! Bodies both ways under wire.py's credit window.
//!
//! Response: `GwBody::Stream` is fed by the worker's reader (Body frames, in order) and
//! pulled by the connection (`h1/`, or hyper for HTTP/2) as the client's socket takes
//! bytes; each chunk pulled pays its size back to the worker as Credit, so a worker never
//! has more than WINDOW bytes buffered here for a slow client. Dropped before its end
//! (the client left): Cancel.
//!
//! Request: a body is read only once the request is placed on a worker (so a refused or
//! queued request reads nothing, and `100 Continue` goes out only then), in CHUNK pieces,
//! while the worker's credit for it is positive. Who reads it is the `ReqBody`: an
//! HTTP/1.1 connection reads its own socket (`Conn`: `start` tells it where the request
//! went), a hyper body (HTTP/2) gets a `pump` task.

use crate::frames;
use crate::gateway::{CreditGate, Service};
use bytes::Bytes;
use http_body::{Body as HttpBody, SizeHint};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug)]
pub enum Chunk {
    Data(Bytes, bool),
    Abort,
}

#[derive(Debug)]
pub struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the response stopped midway (its worker died or failed)")
    }
}

impl std::error::Error for Aborted {}

pub enum GwBody {
    Full(Option<Bytes>),
    Stream(StreamBody),
}

impl GwBody {
    pub fn full(b: Bytes) -> Self {
        GwBody::Full(Some(b))
    }
}

pub struct StreamBody {
    pub rx: mpsc::UnboundedReceiver<Chunk>,
    pub first: Option<Bytes>,
    pub svc: Arc<Service>,
    pub worker: u64,
    pub id: u64,
    pub done: bool,
}

impl StreamBody {
    fn credit_back(&self, n: usize) {
        let mut core = self.svc.core.lock();
        if let Some(wc) = core.workers.get_mut(&self.worker) {
            if wc.inflight.contains_key(&self.id) {
                let id = self.id;
                wc.push(|out| frames::credit(out, id, n as u64));
            }
        }
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        if !self.done {
            self.svc.cancel(self.id);
        }
    }
}

impl HttpBody for GwBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_data(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Aborted>>> {
        match self.get_mut() {
            GwBody::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(Ok)),
            GwBody::Stream(s) => {
                if let Some(first) = s.first.take() {
                    if !first.is_empty() {
                        s.credit_back(first.len());
                        return Poll::Ready(Some(Ok(first)));
                    }
                }
                loop {
                    if s.done {
                        return Poll::Ready(None);
                    }
                    return match s.rx.poll_recv(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Some(Chunk::Data(data, more))) => {
                            if more {
                                s.credit_back(data.len());
                            } else {
                                s.done = true;
                            }
                            if data.is_empty() {
                                continue;
                            }
                            Poll::Ready(Some(Ok(data)))
                        }
                        Poll::Ready(Some(Chunk::Abort)) | Poll::Ready(None) => {
                            s.done = true;
                            Poll::Ready(Some(Err(Aborted)))
                        }
                    };
                }
            }
        }
    }

    fn poll_trailers(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Option<http::HeaderMap>, Aborted>> {
        Poll::Ready(Ok(None))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GwBody::Full(b) => b.as_ref().map_or(true, |b| b.is_empty()),
            GwBody::Stream(s) => s.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GwBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            GwBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// A request body still to come from the client, and who will read it.
pub enum ReqBody {
    /// HTTP/1.1 (`h1/`): the connection reads it from its own buffer and socket once
    /// it hears where the request was placed.
    Conn(oneshot::Sender<Started>),
    /// A hyper body (HTTP/2): a `pump` task reads it.
    Hyper(hyper::Body),
}

/// Where a request with a body was placed: its worker, the credit gate for its body.
pub struct Started {
    pub worker: u64,
    pub gate: Arc<CreditGate>,
    pub max_body: u64,
}

/// Request `id` was placed on worker `w` (under the service's lock): start its body.
pub fn start(svc: &Arc<Service>, rt: &tokio::runtime::Handle, w: u64, id: u64, body: ReqBody, max_body: u64) -> Arc<CreditGate> {
    let gate = CreditGate::new();
    match body {
        ReqBody::Conn(tx) => {
            let _ = tx.send(Started { worker: w, gate: gate.clone(), max_body });
        }
        ReqBody::Hyper(body) => {
            rt.spawn(pump(svc.clone(), w, id, body, gate.clone(), max_body));
        }
    }
    gate
}

/// Forward the client's request body to worker `w` in Body frames under its credit.
pub async fn pump(svc: Arc<Service>, w: u64, id: u64, mut body: hyper::Body, gate: Arc<CreditGate>, max_body: u64) {
    use hyper::body::HttpBody as _;
    let mut total: u64 = 0;
    loop {
        gate.wait().await;
        match body.data().await {
            Some(Ok(chunk)) => {
                total += chunk.len() as u64;
                if total > max_body {
                    let detail = format!("request body exceeds this service's max_body of {max_body} bytes");
                    if let Some(gw) = crate::GATEWAY.get() {
                        svc.fail_running(gw, w, id, 413, "payload too large", &detail);
                    }
                    return;
                }
                let mut core = svc.core.lock();
                let Some(wc) = core.workers.get_mut(&w) else { return };
                if !wc.inflight.contains_key(&id) {
                    return;
                }
                for piece in chunk.chunks(frames::CHUNK) {
                    wc.push(|out| frames::body(out, id, piece, true));
                }
                gate.avail.fetch_sub(chunk.len() as i64, Ordering::AcqRel);
            }
            None => {
                let mut core = svc.core.lock();
                if let Some(wc) = core.workers.get_mut(&w) {
                    if wc.inflight.contains_key(&id) {
                        wc.push(|out| frames::body(out, id, b"", false));
                    }
                }
                return;
            }
            Some(Err(_)) => {
                svc.cancel(id); // the client's body broke off: the client is gone
                return;
            }
        }
    }
}
