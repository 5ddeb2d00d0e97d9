//! One HTTP/1.1 client connection, on any byte stream (`S`: a TcpStream, or a TLS stream
//! around one). One task per connection, one read buffer, one write buffer.
//!
//! How it works. The connection takes its requests in order: it finds a head in the
//! read buffer (`parse::find_end`), parses it in place (`parse::parse_head`: borrowed
//! slices, no allocation per header), and hands it to the shared request path
//! (`http::submit`), which encodes the Req frame straight into the worker's buffer.
//! Bodies, as the Python gateway: one is read up to the service's `request_buffer`
//! before the request takes a slot (`buffer_body`, under `body_timeout`), and a whole one
//! up to CHUNK rides in the Req frame; the rest is read only once the request is placed
//! (`body::Started` comes back), in pieces under the worker's credit, so a queued request
//! reads no more. A request with `Expect: 100-continue` is placed at once, and its
//! `100 Continue` goes out when a worker takes it. The answer (or a streamed body) is
//! written from the write buffer, one `write` per response where it fits (a streamed
//! body's ready chunks go with the head); the next head is parsed only after the answer,
//! so pipelined responses never interleave, and a pipelined request already in the
//! buffer is placed before the previous answer is flushed.
//!
//! What must hold:
//! - a refusal (400/408/414/431/501) is answered after the responses before it, then the
//!   connection closes (written, FIN, the rest drained for a moment so the client reads
//!   the answer instead of a reset);
//! - a response whose request body was not read to its end closes the connection;
//! - a FIN that comes with a request (within `HALF_CLOSE_WINDOW` of its last byte) is
//!   a half-close: what was sent whole is answered, then the connection closes; a later
//!   FIN, or a read error, is a client that left: its request is cancelled (the
//!   `Pending` drops), as the Python gateway's `eof_received`;
//! - timeouts: `header_timeout` from a head's first byte to its end (408; an idle
//!   connection that never sent a byte is just closed), `keepalive_timeout` between
//!   requests (closed). One `Sleep` per connection serves both: setting a deadline is a
//!   store, and the timer, armed at most `step` (the shorter timeout) ahead, re-arms
//!   itself when it fires early — so no timer is touched per request.
//!
//! Layout: this file reads requests and runs the exchange; `answer.rs` writes the answer's
//! bytes (head, chunked or raw body, the gateway's refusals); `wait.rs` holds what an idle
//! connection waits on (the shutdown's `Stop`, the one `Timer`); `tests.rs` runs one
//! connection in memory.

use crate::access;
use crate::body::{GwBody, ReqBody, Started};
use crate::frames;
use crate::gateway::{self, Gateway, Resp, Service};
use crate::handoff;
use crate::http::{self, ConnInfo, Pending, Request, Submitted};
use crate::parse::{self, Chunked, Framing, Parsed, Refusal, Upgrade};
use crate::requestid::Rid;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http_body::Body as _;
use std::os::unix::io::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

mod answer;
#[cfg(test)]
mod tests;
mod wait;

use answer::{sent, Framing2};
use wait::{Stop, Timer};

/// Free room kept in the read buffer before a read.
const READ: usize = 16 * 1024;
/// A FIN this soon after a request's last byte is a half-close (the Python gateway's
/// `HALF_CLOSE_WINDOW`: the tests time a client that leaves against it).
const HALF_CLOSE_WINDOW: Duration = Duration::from_millis(10);
/// How long a closing connection drains what the client still sends.
const LINGER: Duration = Duration::from_secs(1);
/// Bytes read ahead (pipelined requests, or a queued request's body) while waiting.
const READ_AHEAD: usize = 64 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a connection gives up its socket for the WebSocket hand-off: the socket itself, or
/// under TLS a relayed one (`handoff::relay`). None: it cannot (an upgrade is answered 501).
pub type Handoff<S> = fn(S) -> Option<OwnedFd>;

/// Serves HTTP/1.1 on `io` until the client leaves, an error closes it, or the gateway
/// shuts down (between requests).
pub async fn serve<S>(io: S, info: Arc<ConnInfo>, handoff: Option<Handoff<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let gw = info.gw;
    let s = &gw.settings;
    let header = Duration::from_secs_f64(s.header_timeout.max(0.01));
    let idle = Duration::from_secs_f64(s.keepalive_timeout.max(0.01));
    let conn = Conn {
        io,
        gw,
        info,
        buf: BytesMut::with_capacity(READ),
        out: Vec::with_capacity(4096),
        timer: Timer::new(header.min(idle), header),
        header,
        idle,
        stop: Stop::get(gw),
        read_eof: false,
        last_read: Instant::now(),
    };
    conn.run(handoff).await;
}

struct Conn<S> {
    io: S,
    gw: &'static Gateway,
    info: Arc<ConnInfo>,
    buf: BytesMut,
    out: Vec<u8>,
    timer: Timer,
    header: Duration,
    idle: Duration,
    stop: (&'static Stop, usize),
    read_eof: bool,
    last_read: Instant,
}

/// What a parsed head leads to. (A stack value, once per request: boxing the large
/// variant would cost an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Step {
    Refuse(Refusal),
    /// Read the body (up to the service's request_buffer) before the request takes a slot.
    Buffer(BodyWait),
    Upgrade(String),
    Exchange(Exchange),
}

struct BodyWait {
    framing: Framing,
    limit: u64,
    timeout: Duration,
    _reserved: gateway::BodyReservation, // while the body is read
}

/// One request on its way: the answer to wait for and the body still to read.
struct Exchange {
    submitted: Option<Submitted>,
    svc: Option<Arc<Service>>,
    id: u64,
    upload: Upload,
    head_method: bool,
    http10: bool,
    keep_alive: bool,
    expect_continue: bool,
    body_timeout: Duration,
    rid: Rid,
    /// Its access-log record (access.rs), only while the node asks for the log.
    access: Option<access::Record>,
}

/// The request body still to come from the client.
enum Upload {
    Done,
    /// Not placed yet: nothing is read until it is.
    Unplaced(oneshot::Receiver<Started>, Left),
    Pumping(Started, Left, u64),
    /// It will not be read (the request was answered or dropped without it): the
    /// connection closes after the answer.
    Abandoned,
}

enum Left {
    Length(u64),
    Chunked(Chunked),
}

enum Out {
    Waiting(Pending),
    Streaming(GwBody, Framing2),
    Done,
}

enum OutEvent {
    Answer(Result<Resp, oneshot::error::RecvError>),
    Chunk(Option<Result<Bytes, crate::body::Aborted>>),
}

enum InEvent {
    Started(Result<Started, oneshot::error::RecvError>),
    Credit,
}

async fn next_out(out: &mut Out) -> OutEvent {
    match out {
        Out::Waiting(p) => OutEvent::Answer((&mut p.rx).await),
        Out::Streaming(body, _) => OutEvent::Chunk(body.data().await),
        Out::Done => std::future::pending().await,
    }
}

/// What the request body waits on. `credit` is what the exchange loop saw when it chose
/// whether to read the socket: out of credit (it is not reading), the gate is waited on —
/// `wait` returns at once if credit came since. Reading `avail` again here instead once
/// wedged an upload: credit added by a worker's reader on another thread between the
/// loop's look and this one left the loop neither reading nor waiting, for good.
async fn next_in(upload: &mut Upload, credit: bool) -> InEvent {
    match upload {
        Upload::Unplaced(rx, _) => InEvent::Started(rx.await),
        // Only out of credit is there something to wait for (with credit, the socket is).
        Upload::Pumping(st, _, _) if !credit => {
            st.gate.wait().await;
            InEvent::Credit
        }
        _ => std::future::pending().await,
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self, handoff: Option<Handoff<S>>) {
        loop {
            let end = match self.next_head().await {
                Ok(end) => end,
                Err(None) => return self.close(false).await,
                Err(Some(refusal)) => return self.refuse(refusal).await,
            };
            let mut buffered = false;
            let mut step = self.request(end, handoff.is_some(), buffered);
            while let Step::Buffer(wait) = step {
                match self.buffer_body(end, &wait).await {
                    Ok(()) => {}
                    Err(None) => return self.close(true).await,
                    Err(Some(refusal)) => return self.refuse(refusal).await,
                }
                buffered = true;
                step = self.request(end, handoff.is_some(), buffered);
            }
            match step {
                Step::Buffer(_) => unreachable!("buffered above"),
                Step::Refuse(refusal) => return self.refuse(refusal).await,
                Step::Upgrade(service) => {
                    if let Some(handoff) = handoff {
                        return self.hand_off(handoff, &service).await;
                    }
                }
                Step::Exchange(x) => {
                    if !self.exchange(x).await {
                        return self.close(true).await;
                    }
                }
            }
            self.timer.set(self.idle);
        }
    }

    /// Reads until the buffer holds a whole head; returns its length. Err(None): close
    /// quietly (EOF, idle timeout, shutdown); Err(Some): answer the refusal.
    async fn next_head(&mut self) -> Result<usize, Option<Refusal>> {
        let limit = self.gw.settings.header_limit;
        let mut scanned = 0;
        let mut begun = false;
        loop {
            if scanned == 0 {
                while self.buf.starts_with(b"\r\n") {
                    self.buf.advance(2); // empty lines before a request line are ignored
                }
            }
            if !self.buf.is_empty() {
                if !begun {
                    begun = true;
                    self.timer.set(self.header);
                }
                if let Some(end) = parse::find_end(&self.buf, &mut scanned).map_err(Some)? {
                    return Ok(end);
                }
                if let Some(refusal) = parse::too_long(&self.buf, limit) {
                    return Err(Some(refusal));
                }
            } else if self.stop.0.stopping() {
                return Err(None);
            }
            if self.read_eof {
                return Err(None);
            }
            if self.flush().await.is_err() {
                return Err(None);
            }
            if self.buf.capacity() - self.buf.len() < READ / 4 {
                self.buf.reserve(READ);
            }
            let (stop, shard) = self.stop;
            let stopping = stop.shard(shard).notified();
            if self.buf.is_empty() && stop.stopping() {
                return Err(None);
            }
            tokio::select! {
                r = self.io.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => {
                        self.read_eof = true;
                        return Err(None);
                    }
                    Ok(_) => self.last_read = Instant::now(),
                },
                _ = self.timer.expired() => {
                    if self.buf.is_empty() {
                        return Err(None);
                    }
                    return Err(Some(Refusal::new(408, "request headers not received in time")));
                }
                _ = stopping, if self.buf.is_empty() => return Err(None),
            }
        }
    }

    /// Parses the head at the start of the buffer (`end` bytes), checks it and submits
    /// it; consumes the head and any body that rode along.
    fn request(&mut self, end: usize, can_hand_off: bool, buffered: bool) -> Step {
        let limit = self.gw.settings.header_limit;
        let buf = &self.buf[..];
        let mut storage = [httparse::EMPTY_HEADER; parse::HEADERS];
        let mut more_storage;
        let head = match parse::parse_head(&buf[..end], &mut storage, limit) {
            Ok(Parsed::Head(h)) => h,
            Ok(Parsed::TooManyHeaders(n)) => {
                more_storage = vec![httparse::EMPTY_HEADER; n];
                match parse::parse_head(&buf[..end], &mut more_storage, limit) {
                    Ok(Parsed::Head(h)) => h,
                    Ok(Parsed::TooManyHeaders(_)) => return Step::Refuse(Refusal::new(431, "too many header fields")),
                    Err(r) => return Step::Refuse(r),
                }
            }
            Err(r) => return Step::Refuse(r),
        };
        let (raw_path, query) = head.path_query();
        let host = match std::str::from_utf8(head.host) {
            Ok(h) if !h.is_empty() => h,
            _ => head.authority().unwrap_or(""),
        };
        let mut keep_alive = head.keep_alive;
        match head.upgrade {
            Upgrade::WebSocket => {
                if let Some((svc, _)) = self.gw.route(host, &http::percent_decode(raw_path)) {
                    if !can_hand_off {
                        return Step::Refuse(Refusal::new(501, "this connection cannot take a WebSocket"));
                    }
                    return Step::Upgrade(svc.name.clone());
                }
            }
            Upgrade::Other => keep_alive = false, // what follows would not be HTTP/1.1
            Upgrade::No => {}
        }
        let rest = &buf[end..];
        let mut consumed = end;
        let mut decoded = Vec::new();
        let mut total = 0u64;
        let (inline, left, size): (&[u8], Option<Left>, u64) = match head.framing {
            Framing::Empty => (b"", None, 0),
            Framing::Length(n) => {
                if n <= frames::CHUNK as u64 && rest.len() as u64 >= n {
                    consumed += n as usize;
                    (&rest[..n as usize], None, n)
                } else {
                    (b"", Some(Left::Length(n)), n)
                }
            }
            Framing::Chunked => {
                // Decode what came with the head: a malformed start is refused before
                // the request reaches a worker, and a small whole body rides along.
                let mut dec = Chunked::new(limit);
                let used = match dec.feed(rest, &mut |d| {
                    total += d.len() as u64;
                    if decoded.len() <= frames::CHUNK {
                        decoded.extend_from_slice(d)
                    }
                }) {
                    Ok(used) => used,
                    Err(r) => return Step::Refuse(r),
                };
                if dec.done() && decoded.len() <= frames::CHUNK {
                    consumed += used;
                    (&decoded[..], None, decoded.len() as u64)
                } else {
                    (b"", Some(Left::Chunked(Chunked::new(limit))), total)
                }
            }
        };
        let more = left.is_some();
        let mut body_timeout = Duration::from_secs(30);
        let mut overloaded = None; // bodies being read fill the service's max_queue_bytes
        if more {
            // A body still to come: the service's limits say how long to wait for it, and
            // how much of it to read before the request takes a slot (not with Expect:
            // that client sends nothing before its 100 Continue).
            if let Some((svc, _)) = self.gw.route(host, &http::percent_decode(raw_path)) {
                let (request_buffer, timeout, max_body) = {
                    let core = svc.core.lock();
                    (core.spec.request_buffer, core.spec.body_timeout, core.spec.max_body)
                };
                body_timeout = Duration::from_secs_f64(timeout.max(0.01));
                let had = (buf.len() - end) as u64;
                if !buffered && !head.expect_continue && had < request_buffer && size <= max_body {
                    let reserve = if size > 0 { size.min(request_buffer) } else { request_buffer };
                    match gateway::BodyReservation::take(&svc, reserve) {
                        Some(reserved) => {
                            let (framing, limit, timeout) = (head.framing, request_buffer, body_timeout);
                            return Step::Buffer(BodyWait { framing, limit, timeout, _reserved: reserved });
                        }
                        None => overloaded = Some(svc),
                    }
                }
            }
        }
        let (tx, rx) = if more {
            let (tx, rx) = oneshot::channel();
            (Some(ReqBody::Conn(tx)), Some(rx))
        } else {
            (None, None)
        };
        let headers = head.headers;
        let rid = Rid::of(head.request_id);
        let req = Request {
            method: head.method,
            raw_path,
            query,
            host,
            version: if head.http10 { "1.0" } else { "1.1" },
            headers: &headers,
            body: inline,
            more,
            size,
            request_id: rid.as_bytes(),
            drop_trace: head.bad_trace,
        };
        let access = access::enabled().then(|| {
            let (mut referer, mut agent) = (None, None);
            for h in headers.iter() {
                let (name, value) = (h.name.as_bytes(), h.value);
                if referer.is_none() && name.eq_ignore_ascii_case(b"referer") {
                    referer = Some(value.to_vec());
                } else if agent.is_none() && name.eq_ignore_ascii_case(b"user-agent") {
                    agent = Some(value.to_vec());
                }
            }
            let client = &self.info.client_ip;
            let head = access::Head::new(self.gw, host, head.method, raw_path, query, req.version, referer, agent, client, rid.as_bytes());
            Box::new((head, access::Answer::default()))
        });
        let submitted = match overloaded {
            Some(svc) => {
                let mut core = svc.core.lock();
                let max = core.router.max_queue_bytes;
                let detail = format!("service {}: request bodies being received fill max_queue_bytes={max}; retry", svc.name);
                Submitted::Answered(core.made(&self.gw.node_hv, 503, "overloaded", &detail, Some(1), 0.0))
            }
            None => http::submit(&self.info, &req, tx),
        };
        let (svc, id) = match &submitted {
            Submitted::Pending(p) => (p.service().cloned(), p.id),
            Submitted::Answered(_) => (None, 0),
        };
        let upload = match (left, rx) {
            (Some(left), Some(rx)) => Upload::Unplaced(rx, left),
            _ => Upload::Done,
        };
        let x = Exchange {
            submitted: Some(submitted),
            svc,
            id,
            upload,
            head_method: head.method == "HEAD",
            http10: head.http10,
            keep_alive,
            expect_continue: head.expect_continue && !head.http10,
            body_timeout,
            rid,
            access,
        };
        self.buf.advance(consumed);
        Step::Exchange(x)
    }

    /// Reads the body of the head at the start of the buffer (`end` bytes) until it is
    /// whole or `wait.limit` bytes of it are here; a gap of `wait.timeout` is 408, a
    /// malformed chunked body 400 (neither reaches a worker). Err(None): the client left.
    async fn buffer_body(&mut self, end: usize, wait: &BodyWait) -> Result<(), Option<Refusal>> {
        let mut dec = Chunked::new(self.gw.settings.header_limit);
        let mut fed = end;
        self.timer.set(wait.timeout);
        loop {
            let have = (self.buf.len() - end) as u64;
            match wait.framing {
                Framing::Length(n) if have >= n => return Ok(()),
                Framing::Chunked => {
                    fed += dec.feed(&self.buf[fed..], &mut |_| {}).map_err(Some)?;
                    if dec.done() {
                        return Ok(());
                    }
                }
                _ => {}
            }
            if have >= wait.limit {
                return Ok(());
            }
            if self.buf.capacity() - self.buf.len() < READ / 4 {
                self.buf.reserve(READ);
            }
            tokio::select! {
                r = self.io.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => {
                        self.read_eof = true;
                        return Err(None);
                    }
                    Ok(_) => {
                        self.last_read = Instant::now();
                        self.timer.set(wait.timeout);
                    }
                },
                _ = self.timer.expired() => return Err(Some(body_late(wait.timeout))),
            }
        }
    }

    /// Runs one request to the end of its answer. Returns whether the connection goes on.
    async fn exchange(&mut self, mut x: Exchange) -> bool {
        let mut close = false;
        let mut body_clock = false;
        let mut out = match x.submitted.take() {
            Some(Submitted::Pending(p)) => Out::Waiting(p),
            Some(Submitted::Answered(resp)) => {
                if matches!(x.upload, Upload::Unplaced(..)) {
                    x.upload = Upload::Abandoned;
                }
                self.begin(resp, &mut x, &mut close)
            }
            None => Out::Done,
        };
        loop {
            if let Err(refusal) = self.forward(&mut x) {
                // The request body broke its framing: answer 400 if the answer has not
                // begun, else cut the connection.
                if matches!(out, Out::Waiting(_)) {
                    drop(out); // cancels the request
                    self.write_refusal(&refusal);
                }
                return false;
            }
            // What the streamed body already has goes out with the head (or the chunk
            // before): one write, and the head never leaves alone when a chunk is there.
            while let Out::Streaming(body, framing) = &mut out {
                if self.out.len() >= READ_AHEAD {
                    break;
                }
                match body.data().now_or_never() {
                    Some(Some(Ok(data))) => {
                        let framing = *framing;
                        self.chunk(&data, framing);
                        sent(&mut x, &data, framing);
                    }
                    Some(Some(Err(_))) => return false,
                    Some(None) => {
                        if let Framing2::Chunked = framing {
                            self.out.extend_from_slice(b"0\r\n\r\n");
                        }
                        out = Out::Done;
                    }
                    None => break,
                }
            }
            if let Out::Done = out {
                break;
            }
            if self.flush().await.is_err() {
                return false;
            }
            let pumping = matches!(x.upload, Upload::Pumping(..));
            let credit = match &x.upload {
                Upload::Pumping(st, ..) => st.gate.avail.load(Ordering::Acquire) > 0,
                _ => false,
            };
            let watch = !pumping && self.buf.len() < READ_AHEAD;
            let read = !self.read_eof && ((pumping && credit) || watch);
            // The body timeout runs only while the body waits on the client (not on
            // credit, not on the queue).
            let on_client = pumping && credit && !self.read_eof;
            if on_client && !body_clock {
                self.timer.set(x.body_timeout);
            }
            body_clock = on_client;
            if read && self.buf.capacity() - self.buf.len() < READ / 4 {
                self.buf.reserve(READ);
            }
            tokio::select! {
                ev = next_out(&mut out) => match ev {
                    OutEvent::Answer(r) => {
                        if let Out::Waiting(p) = &mut out {
                            p.done();
                        }
                        let resp = r.unwrap_or_else(|_| http::dropped(self.gw));
                        if matches!(x.upload, Upload::Unplaced(..)) {
                            x.upload = Upload::Abandoned; // answered before it was placed
                        }
                        out = self.begin(resp, &mut x, &mut close);
                    }
                    OutEvent::Chunk(Some(Ok(data))) => {
                        if let Out::Streaming(_, framing) = &out {
                            self.chunk(&data, *framing);
                            sent(&mut x, &data, *framing);
                        }
                    }
                    OutEvent::Chunk(Some(Err(_))) => return false, // stopped midway: the client sees the cut
                    OutEvent::Chunk(None) => {
                        if let Out::Streaming(_, Framing2::Chunked) = &out {
                            self.out.extend_from_slice(b"0\r\n\r\n");
                        }
                        out = Out::Done;
                    }
                },
                ev = next_in(&mut x.upload, credit) => match ev {
                    InEvent::Started(Ok(started)) => {
                        if let Upload::Unplaced(_, left) = std::mem::replace(&mut x.upload, Upload::Done) {
                            x.upload = Upload::Pumping(started, left, 0);
                            if x.expect_continue && matches!(out, Out::Waiting(_)) {
                                self.out.extend_from_slice(CONTINUE);
                            }
                        }
                    }
                    InEvent::Started(Err(_)) => x.upload = Upload::Abandoned,
                    InEvent::Credit => {}
                },
                r = self.io.read_buf(&mut self.buf), if read => match r {
                    Ok(0) | Err(_) => {
                        self.read_eof = true;
                        let body_cut = matches!(x.upload, Upload::Unplaced(..) | Upload::Pumping(..));
                        if r.is_err() || body_cut || self.last_read.elapsed() > HALF_CLOSE_WINDOW {
                            return false; // the client left: dropping `out` cancels its request
                        }
                    }
                    Ok(_) => {
                        self.last_read = Instant::now();
                        if pumping {
                            self.timer.set(x.body_timeout);
                        }
                    }
                },
                _ = self.timer.expired(), if on_client => {
                    if matches!(out, Out::Waiting(_)) {
                        drop(out); // cancels the request: its slot is free again
                        self.write_refusal(&body_late(x.body_timeout));
                    }
                    return false;
                }
            }
        }
        if let Some(rec) = x.access.take() {
            access::push(self.gw, &rec.0, &rec.1);
        }
        let finished = matches!(x.upload, Upload::Done);
        !close && x.keep_alive && finished && !self.stop.0.stopping()
    }

    /// Sends what the buffer holds of the request body to its worker while the credit
    /// lasts. Err: the chunked framing is broken.
    fn forward(&mut self, x: &mut Exchange) -> Result<(), Refusal> {
        let Upload::Pumping(st, left, total) = &mut x.upload else { return Ok(()) };
        if self.buf.is_empty() || st.gate.avail.load(Ordering::Acquire) <= 0 {
            return Ok(());
        }
        let Some(svc) = x.svc.clone() else {
            x.upload = Upload::Abandoned;
            return Ok(());
        };
        let id = x.id;
        let max_body = st.max_body;
        let worker = st.worker;
        let mut sent = 0usize;
        let mut finished = false;
        let mut broken = None;
        let mut gone = false;
        {
            let mut core = svc.core.lock();
            match core.workers.get_mut(&worker) {
                Some(wc) if wc.inflight.contains_key(&id) => {
                    let mut push = |data: &[u8]| {
                        for piece in data.chunks(frames::CHUNK) {
                            wc.push(|o| frames::body(o, id, piece, true));
                        }
                        sent += data.len();
                    };
                    let used = match left {
                        Left::Length(n) => {
                            let take = (*n).min(self.buf.len() as u64) as usize;
                            push(&self.buf[..take]);
                            *n -= take as u64;
                            finished = *n == 0;
                            take
                        }
                        Left::Chunked(dec) => match dec.feed(&self.buf, &mut push) {
                            Ok(used) => {
                                finished = dec.done();
                                used
                            }
                            Err(r) => {
                                broken = Some(r);
                                0
                            }
                        },
                    };
                    *total += sent as u64;
                    if finished && *total <= max_body {
                        wc.push(|o| frames::body(o, id, b"", false));
                    }
                    self.buf.advance(used);
                }
                _ => gone = true,
            }
        }
        st.gate.avail.fetch_sub(sent as i64, Ordering::AcqRel);
        if let Some(r) = broken {
            return Err(r);
        }
        if *total > max_body {
            let detail = format!("request body exceeds this service's max_body of {max_body} bytes");
            svc.fail_running(self.gw, worker, id, 413, "payload too large", &detail);
            x.upload = Upload::Abandoned;
        } else if gone {
            x.upload = Upload::Abandoned;
        } else if finished {
            x.upload = Upload::Done;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.io.write_all(&self.out).await;
        self.out.clear();
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::with_capacity(4096);
        }
        r
    }

    /// Answers `refusal` (after the responses before it) and closes.
    async fn refuse(&mut self, refusal: Refusal) {
        self.write_refusal(&refusal);
        self.close(true).await;
    }

    /// Flushes, sends FIN, and (`linger`) reads on for a moment so the client gets the
    /// last answer rather than a reset for the bytes it still had in flight.
    async fn close(&mut self, linger: bool) {
        if self.flush().await.is_err() {
            return;
        }
        let _ = self.io.shutdown().await;
        if !linger || self.read_eof {
            return;
        }
        let until = Instant::now() + LINGER;
        let mut drained = 0usize;
        let mut scratch = [0u8; 4096];
        while drained < (1 << 20) {
            match tokio::time::timeout_at(until, self.io.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => return,
            }
        }
    }

    /// Gives the connection to the node (`handoff.rs`), or answers 431 when what was
    /// read does not fit one control message.
    async fn hand_off(mut self, handoff: Handoff<S>, service: &str) {
        if !handoff::fits(service, self.buf.len()) {
            let refusal = Refusal::new(431, "a WebSocket request's head and the bytes after it exceed one control message");
            return self.refuse(refusal).await;
        }
        if self.flush().await.is_err() {
            return;
        }
        let message = handoff::message(&self.info, service, &self.buf, "1.1");
        let Some(fd) = handoff(self.io) else { return };
        handoff::send(self.gw.control_fd, &message, fd);
    }
}

fn body_late(timeout: Duration) -> Refusal {
    Refusal::new(408, format!("no request body bytes for {}s (body_timeout)", timeout.as_secs_f64()))
}
