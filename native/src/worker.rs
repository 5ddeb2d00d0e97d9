//! One worker's data socket: a writer task that sends the frames queued in the worker's
//! buffer (everything requests appended since its last write leaves in one `write`), and
//! a reader task that decodes the worker's frames and routes them by request id: Resp
//! answers the request's oneshot (the whole response when it fits one frame), Body feeds
//! a streaming response, Credit opens the request body's window, Done frees the slot and
//! gives it to the head of the queue at once.
//!
//! EOF or an error without RemoveWorker: the worker is lost — its in-flight requests get
//! the crash rule (`crash.rs`: a safe request with nothing sent is retried once at the
//! head of the queue, a request that crashed two workers is quarantined, the others get
//! 502 JSON), queued ones stay for the others, and the node hears WorkerLost.

use crate::body::{Chunk, GwBody, StreamBody};
use crate::control::out;
use crate::crash::{self, Crashed, Outcome};
use crate::frames::{self, FromWorker};
use crate::gateway::{made, Core, Gateway, Reply, Resp, Service};
use bytes::{Buf, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};

pub async fn writer(svc: Arc<Service>, w: u64, mut wr: OwnedWriteHalf, wake: Arc<Notify>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut core = svc.core.lock();
            let Some(wc) = core.workers.get_mut(&w) else { return };
            std::mem::swap(&mut wc.out, &mut buf);
        }
        if buf.is_empty() {
            wake.notified().await;
            // Woken by the first frame of this loop turn: let the other ready tasks (the
            // connections whose requests arrived in the same turn) append theirs first, so
            // they leave in one write. Without it tokio's LIFO slot runs this writer right
            // after the first request, one frame per write, each waking the worker.
            tokio::task::yield_now().await;
            continue;
        }
        if wr.write_all(&buf).await.is_err() {
            return; // the reader sees the socket close and handles the loss
        }
        buf.clear();
        if buf.capacity() > 4 * 1024 * 1024 {
            buf = Vec::with_capacity(64 * 1024);
        }
    }
}

pub async fn reader(gw: &'static Gateway, svc: Arc<Service>, w: u64, mut rd: OwnedReadHalf) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut batch: Vec<FromWorker> = Vec::with_capacity(64);
    loop {
        if buf.capacity() - buf.len() < 32 * 1024 {
            buf.reserve(256 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut broken = false;
        while buf.len() >= 4 {
            let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if n > frames::MAX_FRAME {
                broken = true;
                break;
            }
            if buf.len() < 4 + n {
                buf.reserve(4 + n - buf.len());
                break;
            }
            buf.advance(4);
            let payload = buf.split_to(n).freeze();
            match frames::decode(&payload) {
                Ok(frame) => batch.push(frame),
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        let mut idle = false;
        {
            let mut core = svc.core.lock();
            for frame in batch.drain(..) {
                on_frame(gw, &svc, &mut core, w, frame);
            }
            if let Some(wc) = core.workers.get(&w) {
                idle = !wc.node_accepting && wc.inflight.is_empty();
            }
            core.drain(&svc, gw);
        }
        if idle {
            gw.send(&out::worker_idle(w));
        }
        if broken {
            break; // a malformed frame: the stream's framing is lost, as for EOF
        }
    }
    lost(gw, &svc, w, true);
}

fn on_frame(gw: &Gateway, svc: &Arc<Service>, core: &mut Core, w: u64, frame: FromWorker) {
    let now = gw.now();
    let Some(wc) = core.workers.get_mut(&w) else { return };
    match frame {
        FromWorker::Resp { id, status, headers, body, more } => {
            let Some(inflight) = wc.inflight.get_mut(&id) else { return };
            let Reply::Waiting(_) = inflight.reply else { return };
            let Reply::Waiting(tx) = std::mem::replace(&mut inflight.reply, Reply::Finished) else { return };
            let body = if more {
                let (stx, rx) = mpsc::unbounded_channel();
                inflight.reply = Reply::Streaming(stx);
                GwBody::Stream(StreamBody { rx, first: Some(body), svc: svc.clone(), worker: w, id, done: false })
            } else {
                GwBody::full(body)
            };
            let mut resp = response(status, headers, body, &wc.release_hv, &gw.node_hv);
            if crate::access::enabled() {
                resp.extensions_mut().insert(crate::access::Queued(inflight.dispatched - inflight.arrival));
            }
            inflight.status = status; // counted at Done (the duration runs to the answer's end)
            if let Err(mut resp) = tx.send(resp) {
                // The client left meanwhile (its cancel waits for this lock). The body must
                // not cancel on drop here: that would take the lock we hold.
                if let GwBody::Stream(s) = resp.body_mut() {
                    s.done = true;
                }
            }
        }
        FromWorker::Body { id, data, more } => {
            let Some(inflight) = wc.inflight.get_mut(&id) else { return };
            if let Reply::Streaming(tx) = &inflight.reply {
                let _ = tx.send(Chunk::Data(data, more));
                if !more {
                    inflight.reply = Reply::Finished;
                }
            }
        }
        FromWorker::Credit { id, n } => {
            if let Some(gate) = wc.inflight.get(&id).and_then(|i| i.credit.as_ref()) {
                gate.add(n as i64);
            }
        }
        FromWorker::Done { id, error } => {
            let Some(mut inflight) = wc.inflight.remove(&id) else { return };
            let service_time = now - inflight.dispatched;
            match std::mem::replace(&mut inflight.reply, Reply::Finished) {
                Reply::Waiting(tx) if error.as_deref() != Some("cancelled") => {
                    let detail = error.unwrap_or_else(|| "the app returned without a response".into());
                    inflight.status = 500;
                    let _ = tx.send(made(&gw.node_hv, Some(&wc.release_hv), 500, "no response", &detail, None));
                }
                Reply::Streaming(tx) => {
                    let _ = tx.send(Chunk::Abort); // stopped mid-response: the client sees the cut
                }
                _ => {}
            }
            let status = inflight.status;
            inflight.record(&mut wc.stats, status, now);
            core.router.release(w, Some(service_time));
            core.dirty = true;
        }
        FromWorker::Other => {}
    }
}

/// Serve worker `w`'s data socket (a worker's, or a spill channel's): its writer and its
/// reader, on the runtime; a socket tokio cannot take is a lost worker.
pub fn serve(gw: &'static Gateway, svc: Arc<Service>, w: u64, stream: std::os::unix::net::UnixStream, wake: Arc<Notify>) {
    gw.rt.spawn(async move {
        let Ok(stream) = tokio::net::UnixStream::from_std(stream) else {
            lost(gw, &svc, w, true);
            return;
        };
        let (rd, wr) = stream.into_split();
        tokio::spawn(writer(svc.clone(), w, wr, wake));
        reader(gw, svc, w, rd).await;
    });
}

/// The response head from a worker's Resp: its headers (the gateway frames the body
/// itself, so transfer-encoding goes), then the release and the node.
fn response(
    status: u16,
    headers: Vec<(bytes::Bytes, bytes::Bytes)>,
    body: GwBody,
    release: &HeaderValue,
    node: &HeaderValue,
) -> Resp {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = resp.headers_mut();
    map.reserve(headers.len() + 2);
    for (name, value) in headers {
        let Ok(name) = HeaderName::from_bytes(&name) else { continue };
        if name == http::header::TRANSFER_ENCODING {
            continue;
        }
        let Ok(value) = HeaderValue::from_maybe_shared(value) else { continue };
        map.append(name, value);
    }
    map.insert(HeaderName::from_static("anycore-release"), release.clone());
    // A spilled request's answer (spill.rs) names the peer that ran it; a worker's never has one.
    map.entry(HeaderName::from_static("anycore-node")).or_insert_with(|| node.clone());
    resp
}

/// Worker `w` is gone: `unexpected` (EOF under us) tells the node WorkerLost; a
/// RemoveWorker from the node does not. Its in-flight requests get the crash rule
/// (`crash.rs`): retried at the head of the queue, quarantined or answered 502; the node
/// hears each verdict (`RequestCrashed`) to log it as the Python gateway does.
pub fn lost(gw: &Gateway, svc: &Arc<Service>, w: u64, unexpected: bool) {
    let inflight;
    let mut notes: Vec<Vec<u8>> = Vec::new();
    let mut answers = Vec::new(); // after the notes: the node logs a verdict before its client sees it
    {
        let mut core = svc.core.lock();
        let Some(wc) = core.workers.remove(&w) else { return };
        core.router.remove_worker(w);
        inflight = wc.inflight.len() as u64;
        let mut stats = wc.stats;
        let share = if inflight > 0 { 1.0 / inflight as f64 } else { 0.0 };
        let now = gw.now();
        let mut retries = Vec::new();
        for (id, mut i) in wc.inflight {
            i.attempt.blame += share;
            let a = &i.attempt;
            let verdict = crash::outcome(&Crashed {
                method: a.method,
                answered: matches!(i.reply, Reply::Finished),
                response_started: matches!(i.reply, Reply::Streaming(_)),
                replayable: a.frame.is_some(),
                attempts: a.attempts,
                blame: a.blame,
            });
            let path = a.frame.as_deref().and_then(frames::req_key).map_or(&b""[..], |(_, p, _)| p);
            if verdict != Outcome::Done {
                notes.push(out::request_crashed(&svc.name, w, verdict.name(), a.method, path, a.blame, a.request_id()));
            }
            let (error, detail) = match verdict {
                Outcome::Done => {
                    let status = i.status; // a complete answer whose Done did not come
                    i.record(&mut stats, status, now);
                    continue;
                }
                Outcome::Retry => {
                    if let Reply::Waiting(tx) = std::mem::replace(&mut i.reply, Reply::Finished) {
                        retries.push((id, tx, i));
                    }
                    continue;
                }
                Outcome::Quarantine => {
                    if let Some((m, p, q)) = a.frame.as_deref().and_then(frames::req_key) {
                        core.quarantine.insert((m.to_vec(), p.to_vec(), q.to_vec()), now + crash::QUARANTINE_TTL);
                    }
                    core.quarantined += 1;
                    ("quarantined", "this request crashed two workers; it will not be retried — see `anycore logs` for the crash".to_string())
                }
                Outcome::Fail => {
                    let why = crash::why_not_retried(matches!(i.reply, Reply::Streaming(_)));
                    let what = if a.method.is_empty() { String::new() } else { format!("{} ", a.method) };
                    ("worker died", format!("the worker running this {what}request died ({why}); the request may or may not have taken effect"))
                }
            };
            match std::mem::replace(&mut i.reply, Reply::Finished) {
                Reply::Waiting(tx) => {
                    answers.push((tx, made(&gw.node_hv, Some(&wc.release_hv), 502, error, &detail, None)));
                    i.record(&mut stats, 502, now);
                }
                Reply::Streaming(tx) => {
                    let _ = tx.send(Chunk::Abort); // the client sees the cut
                    let status = i.status;
                    i.record(&mut stats, status, now);
                }
                Reply::Finished => {}
            }
        }
        core.keep_stats(&wc.release, &stats);
        for (id, tx, i) in retries {
            core.retry(svc, gw, id, tx, i);
        }
        wc.wake.notify_one(); // the writer finds no entry and ends
        let _ = nix::sys::socket::shutdown(wc.fd, nix::sys::socket::Shutdown::Both);
        core.dirty = true;
        core.drain(svc, gw);
    }
    gw.workers.lock().remove(&w);
    for note in notes {
        gw.send(&note);
    }
    for (tx, resp) in answers {
        let _ = tx.send(resp);
    }
    if unexpected {
        gw.send(&out::worker_lost(w, inflight));
    }
}
