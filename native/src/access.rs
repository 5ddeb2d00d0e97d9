//! The access log on the native gateway (`--access-log`): one record per finished exchange,
//! HTTP/1.1 (h1/) or an HTTP/2 stream (h2.rs), only when the node asks for it
//! (`Settings.access_log`).
//!
//! The node owns the log (its formats, its rings for `anycore logs`, the dashboard's
//! timeline), so the gateway only measures: a record is a msgpack array appended to one
//! shared buffer, and the buffer goes to the node as one `AccessLog` message (gw->node 68)
//! every tick, or as soon as it holds FLUSH_AT bytes (a control datagram the node reads
//! whole: it reads 64 KiB). The node formats each record as the Python gateway's line
//! (logfmt, json, combined): per line it pays what the Python gateway pays anyway, and the
//! gateway, with the log off, one relaxed load per request.

use crate::frames::{w_array, w_bin, w_str, w_uint};
use crate::gateway::Gateway;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub const ACCESS_LOG: u64 = 68;
const FLUSH_AT: usize = 48 * 1024;

static ON: AtomicBool = AtomicBool::new(false);
static BUF: Mutex<(Vec<u8>, u32)> = Mutex::new((Vec::new(), 0));

pub fn set(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// What a request's line needs, taken from its head when it is submitted.
pub struct Head {
    pub service: String,
    pub method: String,
    pub target: Vec<u8>, // raw path, then `?query` if any
    pub path_len: usize, // the raw path's length in `target`
    pub version: &'static str,
    pub referer: Option<Vec<u8>>,
    pub agent: Option<Vec<u8>>,
    pub client: String,
    pub request_id: Vec<u8>,
    pub arrival: f64,     // the gateway's clock (Gateway::now)
    pub received: f64,    // seconds since the epoch, for the combined format's %t
}

/// A record under way: built from the request's head, its answer filled in as it is sent,
/// pushed when the exchange ends.
pub type Record = Box<(Head, Answer)>;

impl Head {
    /// From a request's head (`referer` and `agent` for the combined format).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gw: &Gateway,
        host: &str,
        method: &str,
        raw_path: &str,
        query: &str,
        version: &'static str,
        referer: Option<Vec<u8>>,
        agent: Option<Vec<u8>>,
        client: &str,
        request_id: &[u8],
    ) -> Head {
        let mut target = raw_path.as_bytes().to_vec();
        if !query.is_empty() {
            target.push(b'?');
            target.extend_from_slice(query.as_bytes());
        }
        let service = gw.route(host, &crate::http::percent_decode(raw_path)).map(|(s, _)| s.name.clone());
        let received = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        Head {
            service: service.unwrap_or_default(),
            method: method.to_string(),
            path_len: raw_path.len(),
            target,
            version,
            referer,
            agent,
            client: client.to_string(),
            request_id: request_id.to_vec(),
            arrival: gw.now(),
            received,
        }
    }
}

impl Answer {
    /// What a response's head says; `bytes` is counted as its body is sent.
    pub fn of(gw: &Gateway, parts: &http::response::Parts) -> Answer {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let node = header("anycore-node");
        Answer {
            status: parts.status.as_u16(),
            release: header("anycore-release"),
            node: if node == gw.settings.node { String::new() } else { node }, // a peer ran it
            queued: parts.extensions.get::<Queued>().map_or(0.0, |q| q.0),
            bytes: 0,
        }
    }
}

/// A response extension: seconds the request waited in the queue (worker.rs sets it on a
/// worker's answer, `Core::made` on the gateway's own).
#[derive(Clone, Copy)]
pub struct Queued(pub f64);

/// What the answer added: its status, release, the node that ran it, seconds queued.
#[derive(Default)]
pub struct Answer {
    pub status: u16,
    pub release: String,
    pub node: String,
    pub queued: f64,
    pub bytes: u64,
}

/// One finished exchange: appended to the batch (sent at once past FLUSH_AT).
pub fn push(gw: &Gateway, head: &Head, answer: &Answer) {
    let now = gw.now();
    let mut rec = Vec::with_capacity(128 + head.target.len());
    w_array(&mut rec, 16);
    w_str(&mut rec, &head.service);
    w_str(&mut rec, &head.method);
    w_bin(&mut rec, &head.target[..head.path_len]);
    w_bin(&mut rec, &head.target);
    w_uint(&mut rec, answer.status as u64);
    let _ = rmp::encode::write_f64(&mut rec, (now - head.arrival).max(0.0));
    let _ = rmp::encode::write_f64(&mut rec, answer.queued.max(0.0));
    w_str(&mut rec, &answer.release);
    w_str(&mut rec, &head.client);
    w_uint(&mut rec, answer.bytes);
    w_str(&mut rec, &answer.node);
    w_bin(&mut rec, &head.request_id);
    w_str(&mut rec, head.version);
    w_opt(&mut rec, head.referer.as_deref());
    w_opt(&mut rec, head.agent.as_deref());
    let _ = rmp::encode::write_f64(&mut rec, head.received);
    let full = {
        let mut buf = BUF.lock();
        buf.0.extend_from_slice(&rec);
        buf.1 += 1;
        buf.0.len() >= FLUSH_AT
    };
    if full {
        flush(gw);
    }
}

fn w_opt(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => w_bin(out, v),
        None => {
            let _ = rmp::encode::write_nil(out);
        }
    }
}

/// Send what the batch holds (the ticker calls it every TICK).
pub fn flush(gw: &Gateway) {
    let (records, n) = {
        let mut buf = BUF.lock();
        if buf.1 == 0 {
            return;
        }
        let n = std::mem::replace(&mut buf.1, 0);
        (std::mem::take(&mut buf.0), n)
    };
    gw.send(&message(&records, n));
}

/// AccessLog: [68, [record, ...]]; each record the 16 fields `push` writes.
fn message(records: &[u8], n: u32) -> Vec<u8> {
    let mut o = Vec::with_capacity(records.len() + 16);
    w_array(&mut o, 2);
    w_uint(&mut o, ACCESS_LOG);
    let _ = rmp::encode::write_array_len(&mut o, n);
    o.extend_from_slice(records);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_array_of_its_records() {
        let m = message(&[0x91, 0x01, 0x91, 0x02], 2);
        assert_eq!(m, vec![0x92, 68, 0x92, 0x91, 0x01, 0x91, 0x02]);
    }
}
