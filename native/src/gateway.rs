//! The gateway's shared state and the placement executor around the router core.
//!
//! Ownership. The node's control messages (one std thread) and the HTTP connections
//! (tokio tasks on every runtime thread) meet in `Service::core`, one short mutex per
//! service: the router, the service's workers with their pending write buffers and
//! in-flight tables, and the queued requests. A request takes it once to be placed (the
//! Req frame is encoded straight into the worker's write buffer under it), a worker's
//! reader once per batch of frames read. Everything slow (socket I/O, building bodies)
//! happens outside it. The route table is read through a per-thread cache refreshed by
//! a generation counter, so routing takes no lock.
//!
//! Answers. Exactly one party answers a request: the worker's `Resp` (through the
//! request's oneshot), or the gateway itself (`made`: 404, 413, 502, 503, 504 as JSON,
//! the shapes of `gateway/exchange.py`'s `fail`). The `Reply` state is the switch.

use crate::control::{self, ServiceSpec, Settings};
use crate::frames;
use crate::router::{Decision, Router};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::body::{Chunk, GwBody};

pub type Resp = Response<GwBody>;

pub struct Gateway {
    pub settings: Settings,
    pub node_hv: HeaderValue,
    pub control_fd: RawFd,
    pub epoch: Instant,
    pub rt: tokio::runtime::Handle,
    pub next_id: AtomicU64,
    pub services: Mutex<HashMap<String, Arc<Service>>>,
    pub workers: Mutex<HashMap<u64, Arc<Service>>>,
    pub routes: RwLock<Arc<Routes>>,
    pub routes_gen: AtomicU64,
    pub starting: AtomicBool,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub connections: Arc<tokio::sync::Semaphore>,
}

pub struct Routes {
    /// (host or None, prefix, service), host-specific first, then the longest prefix.
    pub entries: Vec<(Option<String>, String, Arc<Service>)>,
}

thread_local! {
    static ROUTES: std::cell::RefCell<(u64, Option<Arc<Routes>>)> = const { std::cell::RefCell::new((u64::MAX, None)) };
}

/// A header value that lives as long as the process: cloning it costs no atomic. Made
/// once per node id and per release name (a handful per deploy).
pub fn static_value(s: &str) -> HeaderValue {
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    HeaderValue::from_maybe_shared(Bytes::from_static(leaked.as_bytes()))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

impl Gateway {
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    pub fn send(&self, message: &[u8]) {
        control::send(self.control_fd, message);
    }

    /// The service routed at `host` + `path` and the matched prefix (the ASGI root_path).
    pub fn route(&self, host: &str, path: &str) -> Option<(Arc<Service>, usize)> {
        ROUTES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let generation = self.routes_gen.load(Ordering::Acquire);
            if cache.0 != generation || cache.1.is_none() {
                *cache = (generation, Some(self.routes.read().clone()));
            }
            let routes = cache.1.as_ref()?;
            let host = if host.ends_with(']') { host } else { host.rsplit_once(':').map_or(host, |(h, _)| h) };
            for (route_host, prefix, service) in &routes.entries {
                if let Some(h) = route_host {
                    if !h.eq_ignore_ascii_case(host) {
                        continue;
                    }
                }
                if prefix == "/" {
                    return Some((service.clone(), 0));
                }
                if path == prefix || (path.starts_with(prefix.as_str()) && path.as_bytes()[prefix.len()] == b'/') {
                    return Some((service.clone(), prefix.len()));
                }
            }
            None
        })
    }

    pub fn rebuild_routes(&self) {
        let services = self.services.lock();
        let mut entries = Vec::new();
        for service in services.values() {
            let core = service.core.lock();
            for route in &core.spec.routes {
                let (host, prefix) = parse_route(route);
                entries.push((host, prefix, service.clone()));
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse((e.0.is_some(), e.1.len())));
        *self.routes.write() = Arc::new(Routes { entries });
        self.routes_gen.fetch_add(1, Ordering::Release);
    }

    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        self.services.lock().get(name).cloned()
    }
}

/// `"api.example.com/v1"` -> (Some("api.example.com"), "/v1"), as `config.parse_route`.
pub fn parse_route(route: &str) -> (Option<String>, String) {
    let (host, prefix) = match route.find('/') {
        Some(i) => (&route[..i], format!("/{}", route[i + 1..].trim_end_matches('/'))),
        None => (route, "/".to_string()),
    };
    let host = host.to_ascii_lowercase();
    (if host.is_empty() { None } else { Some(host) }, prefix)
}

pub struct Service {
    pub name: String,
    pub core: Mutex<Core>,
}

pub enum Reply {
    Waiting(oneshot::Sender<Resp>),
    Streaming(mpsc::UnboundedSender<Chunk>),
    Finished,
}

/// Request-body credit: bytes the gateway may still send the worker (wire.WINDOW, paid
/// back by the worker's Credit frames as the app reads).
pub struct CreditGate {
    pub avail: AtomicI64,
    pub notify: Notify,
}

impl CreditGate {
    pub fn new() -> Arc<Self> {
        Arc::new(CreditGate { avail: AtomicI64::new(frames::WINDOW), notify: Notify::new() })
    }
    pub fn add(&self, n: i64) {
        self.avail.fetch_add(n, Ordering::AcqRel);
        self.notify.notify_one();
    }
    pub async fn wait(&self) {
        loop {
            if self.avail.load(Ordering::Acquire) > 0 {
                return;
            }
            let notified = self.notify.notified();
            if self.avail.load(Ordering::Acquire) > 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct Inflight {
    pub reply: Reply,
    pub credit: Option<Arc<CreditGate>>,
    pub dispatched: f64,
    pub deadline: f64,
}

pub struct WorkerConn {
    pub release: String,
    pub release_hv: HeaderValue,
    pub node_accepting: bool,
    pub out: Vec<u8>,
    pub wake: Arc<Notify>,
    pub inflight: HashMap<u64, Inflight>,
    pub statuses: Vec<(u16, u64)>,
    pub fd: RawFd,
}

impl WorkerConn {
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let was_empty = self.out.is_empty();
        write(&mut self.out);
        if was_empty {
            self.wake.notify_one();
        }
    }
    pub fn count(&mut self, status: u16) {
        match self.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.statuses.push((status, 1)),
        }
    }
}

pub struct QueuedReq {
    pub frame: Vec<u8>,
    pub body: Option<hyper::Body>,
    pub reply: oneshot::Sender<Resp>,
}

pub struct Core {
    pub router: Router<u64>,
    pub spec: ServiceSpec,
    pub release_hv: Option<HeaderValue>,
    pub workers: HashMap<u64, WorkerConn>,
    pub queued: HashMap<u64, QueuedReq>,
    pub made: HashMap<(String, u16), u64>,
    pub rejected: HashMap<&'static str, u64>,
    pub dirty: bool,
    pub placed: Vec<(u64, u64)>,
}

impl Core {
    pub fn new(spec: ServiceSpec) -> Self {
        let release_hv = (!spec.release.is_empty()).then(|| static_value(&spec.release));
        Core {
            router: Router::new(spec.max_queue, spec.max_queue_bytes),
            spec,
            release_hv,
            workers: HashMap::new(),
            queued: HashMap::new(),
            made: HashMap::new(),
            rejected: HashMap::new(),
            dirty: true,
            placed: Vec::new(),
        }
    }

    pub fn count_made(&mut self, status: u16) {
        *self.made.entry((self.spec.release.clone(), status)).or_insert(0) += 1;
        self.dirty = true;
    }

    pub fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_insert(0) += 1;
        self.dirty = true;
    }

    /// A node-made answer, counted against the live release.
    pub fn made(&mut self, node: &HeaderValue, status: u16, error: &str, detail: &str, retry: Option<u64>) -> Resp {
        self.count_made(status);
        made(node, self.release_hv.as_ref(), status, error, detail, retry)
    }

    /// Whether the router should send new requests to worker `w` (node says it accepts,
    /// it belongs to the live release, the service runs).
    pub fn recompute(&mut self, w: u64) {
        if let Some(wc) = self.workers.get(&w) {
            let accepting = wc.node_accepting && wc.release == self.spec.release && self.spec.running;
            self.router.set_accepting(w, accepting);
        }
    }

    pub fn recompute_all(&mut self) {
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        for w in ids {
            self.recompute(w);
        }
    }

    /// Queued requests take the free slots. Returns the workers that became idle while
    /// draining (none: placing only adds load).
    pub fn drain(&mut self, svc: &Arc<Service>, gw: &Gateway) {
        if self.router.queue.is_empty() {
            return;
        }
        let mut placed = std::mem::take(&mut self.placed);
        self.router.drain_queue_into(&mut placed);
        let now = gw.now();
        for (id, w) in placed.drain(..) {
            let Some(q) = self.queued.remove(&id) else { continue };
            let deadline = now + self.spec.deadline; // unused by the router once placed
            self.start(svc, gw, w, id, |out| out.extend_from_slice(&q.frame), q.body, q.reply, now, deadline);
        }
        self.placed = placed;
        self.dirty = true;
    }

    /// Start request `id` on worker `w`: its Req frame into the write buffer, its reply
    /// into the in-flight table, and its body pump when it has a body.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        svc: &Arc<Service>,
        gw: &Gateway,
        w: u64,
        id: u64,
        write: impl FnOnce(&mut Vec<u8>),
        body: Option<hyper::Body>,
        reply: oneshot::Sender<Resp>,
        now: f64,
        deadline: f64,
    ) {
        let max_body = self.spec.max_body;
        let Some(wc) = self.workers.get_mut(&w) else {
            // The router and the table change together under this lock: cannot happen.
            self.router.remove_worker(w);
            let _ = reply.send(made(&gw.node_hv, None, 502, "worker died", "the worker was gone", None));
            return;
        };
        wc.push(write);
        let credit = body.map(|body| {
            let gate = CreditGate::new();
            gw.rt.spawn(crate::body::pump(svc.clone(), w, id, body, gate.clone(), max_body));
            gate
        });
        wc.inflight.insert(id, Inflight { reply: Reply::Waiting(reply), credit, dispatched: now, deadline });
    }
}

impl Service {
    /// The client of request `id` went away: unqueue it, or tell its worker.
    pub fn cancel(&self, id: u64) {
        let mut core = self.core.lock();
        if core.router.cancel(&id) {
            core.queued.remove(&id);
            core.dirty = true;
            return;
        }
        for wc in core.workers.values_mut() {
            if let Some(inflight) = wc.inflight.get_mut(&id) {
                inflight.reply = Reply::Finished;
                wc.push(|out| frames::cancel(out, id));
                return;
            }
        }
    }

    /// Answer request `id` with a node-made error if its response has not started, and
    /// cancel it on its worker (413 past max_body while streaming the request body).
    pub fn fail_running(&self, gw: &Gateway, w: u64, id: u64, status: u16, error: &str, detail: &str) {
        let mut core = self.core.lock();
        let release_hv = core.release_hv.clone();
        let Some(wc) = core.workers.get_mut(&w) else { return };
        let Some(inflight) = wc.inflight.get_mut(&id) else { return };
        if let Reply::Waiting(tx) = std::mem::replace(&mut inflight.reply, Reply::Finished) {
            let _ = tx.send(made(&gw.node_hv, release_hv.as_ref(), status, error, detail, None));
        }
        wc.push(|out| frames::cancel(out, id));
        core.count_made(status);
    }
}

/// Admit and place a request: `Ok(id)` once placed or queued (the answer comes on
/// `reply`), `Err(answer)` when the gateway answers at once (a rare path: the size of
/// the Err does not matter).
#[allow(clippy::result_large_err)]
pub fn place(
    gw: &Gateway,
    svc: &Arc<Service>,
    size: u64,
    write: impl FnOnce(&mut Vec<u8>, u64),
    body: Option<hyper::Body>,
    reply: oneshot::Sender<Resp>,
) -> Result<u64, Resp> {
    let mut core = svc.core.lock();
    if !core.spec.running {
        core.reject("stopped");
        let detail = format!("service {} is stopped — `anycore start {}`", svc.name, svc.name);
        return Err(core.made(&gw.node_hv, 503, "service stopped", &detail, Some(STOPPED_RETRY_AFTER)));
    }
    if size > core.spec.max_body {
        core.reject("too_large");
        let detail = format!("request body of {size} bytes exceeds max_body={}", core.spec.max_body);
        return Err(core.made(&gw.node_hv, 413, "payload too large", &detail, None));
    }
    let now = gw.now();
    let deadline = now + core.spec.deadline;
    let id = gw.next_id.fetch_add(1, Ordering::Relaxed);
    match core.router.submit(id, size, deadline, now, false) {
        Decision::Placed(w) => {
            core.start(svc, gw, w, id, |out| write(out, id), body, reply, now, deadline);
            core.dirty = true;
            Ok(id)
        }
        Decision::Queued(_) => {
            let mut frame = Vec::with_capacity(256);
            write(&mut frame, id);
            core.queued.insert(id, QueuedReq { frame, body, reply });
            core.dirty = true;
            crate::spill::queued(gw, svc, &mut core); // a peer's free slot, if the node knows one
            Ok(id)
        }
        Decision::Rejected(reason, retry_after) => {
            core.reject(reason.stat());
            let detail = format!("service {}: {}; retry after {retry_after}s", svc.name, reason.text());
            Err(core.made(&gw.node_hv, 503, "overloaded", &detail, Some(retry_after)))
        }
    }
}

pub const STOPPED_RETRY_AFTER: u64 = 5;

pub fn json_escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) > 0x7e => {
                // ASCII-only, as Python's json.dumps
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A node-made JSON answer: `{"error": ..., "detail": ..., "status": ...}`, with
/// Retry-After when given, the live release and the node. 4xx framing errors close.
pub fn made(node: &HeaderValue, release: Option<&HeaderValue>, status: u16, error: &str, detail: &str, retry: Option<u64>) -> Resp {
    let mut body = String::with_capacity(64 + detail.len());
    body.push_str("{\"error\": ");
    json_escape(&mut body, error);
    body.push_str(", \"detail\": ");
    json_escape(&mut body, detail);
    body.push_str(&format!(", \"status\": {status}}}"));
    let mut resp = Response::new(GwBody::full(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(after) = retry {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(after));
    }
    if let Some(release) = release {
        h.insert(HeaderName::from_static("anycore-release"), release.clone());
    }
    h.insert(HeaderName::from_static("anycore-node"), node.clone());
    if matches!(status, 400 | 408 | 413 | 431) {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
