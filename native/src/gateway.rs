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
use crate::stats::RelStats;
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

use crate::body::{Chunk, GwBody, ReqBody};

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
    pub unrouted: Mutex<Unrouted>,
}

/// The gateway's answers to requests no service is routed at, counted as the Python
/// gateway counts them: service "", release "", rejected "no_route" or "starting".
#[derive(Default)]
pub struct Unrouted {
    pub stats: RelStats,
    pub rejected: HashMap<&'static str, u64>,
    /// A connection's own refusals (400/408/414/431/501, before or outside a request):
    /// no service's answers, so counted here for the node's `gateway_errors`.
    pub refused: HashMap<u16, u64>,
    pub dirty: bool,
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

    /// The answer to a request no route matches (any transport's request path calls
    /// this): 503 while the node is still starting its services, else 404; counted.
    pub fn unrouted(&self, host: &str, path: &str) -> Resp {
        let starting = self.starting.load(Ordering::Relaxed);
        let resp = if starting {
            made(&self.node_hv, None, 503, "starting", "the node is starting its services; retry", Some(1))
        } else {
            let detail = format!("no service is routed at {host}{path} on this node — see `anycore ps`");
            made(&self.node_hv, None, 404, "not found", &detail, None)
        };
        let mut unrouted = self.unrouted.lock();
        unrouted.stats.record(resp.status().as_u16(), 0.0, None);
        *unrouted.rejected.entry(if starting { "starting" } else { "no_route" }).or_insert(0) += 1;
        unrouted.dirty = true;
        resp
    }

    /// The Stats message of service "" (the unrouted answers), when they changed.
    pub fn unrouted_stats(&self) -> Option<Vec<u8>> {
        let mut unrouted = self.unrouted.lock();
        if !std::mem::replace(&mut unrouted.dirty, false) {
            return None;
        }
        let stats = &unrouted.stats;
        Some(control::out::stats(&control::out::StatsMsg {
            service: "",
            queued: 0,
            inflight: Vec::new(),
            served: Vec::new(),
            statuses: stats.statuses.iter().map(|(s, n)| (String::new(), *s, *n)).collect(),
            rejected: unrouted.rejected.iter().map(|(r, n)| (*r, *n)).collect(),
            histograms: vec![(String::new(), stats.duration.clone(), stats.queue_wait.clone())],
            connections: self.open_connections(),
            refused: unrouted.refused.iter().map(|(s, n)| (*s, *n)).collect(),
            buffering: 0,
        }))
    }

    /// A connection refused a request itself (h1/): counted for the node.
    pub fn refused(&self, status: u16) {
        let mut unrouted = self.unrouted.lock();
        *unrouted.refused.entry(status).or_insert(0) += 1;
        unrouted.dirty = true;
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> u64 {
        self.settings.max_connections.saturating_sub(self.connections.available_permits()) as u64
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
    pub arrival: f64,
    pub attempt: Attempt,
    pub status: u16,    // the worker's Resp status, 0 before it
    pub recorded: bool, // counted in the stats already (the gateway answered it)
}

impl Inflight {
    /// Count its answer (once) in its worker's stats.
    pub fn record(&mut self, stats: &mut RelStats, status: u16, now: f64) {
        if !self.recorded && status != 0 {
            self.recorded = true;
            stats.record(status, now - self.arrival, Some(self.dispatched - self.arrival));
        }
    }
}

/// What the crash rule (`crash.rs`) needs of a request across its attempts.
#[derive(Default)]
pub struct Attempt {
    pub method: &'static str, // as crash::known_method: "" for one the rule does not name
    pub attempts: u8,         // times started on a worker
    pub blame: f64,           // its share of the workers that died under it
    pub frame: Option<Vec<u8>>, // its Req frame, kept while it could be replayed (safe, no body)
    pub rid: Option<Box<[u8]>>, // its request id when `frame` is not kept, for the node's crash line
}

impl Attempt {
    /// Its request id: the node logs it with the crash rule's verdict.
    pub fn request_id(&self) -> &[u8] {
        self.frame.as_deref().and_then(frames::req_request_id).or(self.rid.as_deref()).unwrap_or(b"")
    }
}

pub struct WorkerConn {
    pub release: String,
    pub release_hv: HeaderValue,
    pub node_accepting: bool,
    pub out: Vec<u8>,
    pub wake: Arc<Notify>,
    pub inflight: HashMap<u64, Inflight>,
    pub stats: RelStats, // its answers; merged into Core::released when it goes
    pub fd: RawFd,
}

impl WorkerConn {
    /// A worker's (or a spill channel's) connection, accepting, nothing in flight yet.
    pub fn new(release: String, wake: Arc<Notify>, fd: RawFd, capacity: usize) -> Self {
        WorkerConn {
            release_hv: static_value(&release),
            release,
            node_accepting: true,
            out: Vec::with_capacity(capacity),
            wake,
            inflight: HashMap::new(),
            stats: RelStats::default(),
            fd,
        }
    }

    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let was_empty = self.out.is_empty();
        write(&mut self.out);
        if was_empty {
            self.wake.notify_one();
        }
    }
}

pub struct QueuedReq {
    pub frame: Vec<u8>,
    pub body: Option<ReqBody>,
    pub reply: oneshot::Sender<Resp>,
    pub arrival: f64,
    pub deadline: f64,
    pub attempt: Attempt,
}

/// The quarantine's key: (method, raw path, query), as `node/crashes.py`.
pub type QuarantineKey = (Vec<u8>, Vec<u8>, Vec<u8>);

pub struct Core {
    pub router: Router<u64>,
    pub spec: ServiceSpec,
    pub release_hv: Option<HeaderValue>,
    pub workers: HashMap<u64, WorkerConn>,
    pub queued: HashMap<u64, QueuedReq>,
    /// Per release: the answers of gone workers, and under "" the gateway's answers to
    /// requests no release took (refused, expired in the queue), as the Python gateway.
    pub released: HashMap<String, RelStats>,
    pub rejected: HashMap<&'static str, u64>,
    pub dirty: bool,
    pub placed: Vec<(u64, u64)>,
    pub quarantine: HashMap<QuarantineKey, f64>, // refused until (gateway time)
    pub quarantined: u64,                        // requests that crashed two workers
    /// Bytes of `max_queue_bytes` held by bodies being read before their request takes a
    /// slot (`BodyReservation`), the Python gateway's `buffering`.
    pub buffering: u64,
}

/// A request whose body is read (up to `request_buffer`) before it takes a slot holds that
/// much of its service's `max_queue_bytes`, so trickling uploads cannot pile up in the
/// gateway past it; handed back when dropped (the body is in, or the request is gone).
pub struct BodyReservation {
    svc: Arc<Service>,
    bytes: u64,
}

impl BodyReservation {
    /// None (counted as a queue_full rejection): the bodies being read and the queue's
    /// would pass max_queue_bytes.
    pub fn take(svc: &Arc<Service>, bytes: u64) -> Option<BodyReservation> {
        let mut core = svc.core.lock();
        if core.buffering + core.router.queued_bytes + bytes > core.router.max_queue_bytes {
            core.reject("queue_full");
            return None;
        }
        core.buffering += bytes;
        core.dirty = true; // its Stats say so (`ps`: buffering_bytes)
        Some(BodyReservation { svc: svc.clone(), bytes })
    }
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        let mut core = self.svc.core.lock();
        core.buffering = core.buffering.saturating_sub(self.bytes);
        core.dirty = true;
    }
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
            released: HashMap::new(),
            rejected: HashMap::new(),
            dirty: true,
            placed: Vec::new(),
            quarantine: HashMap::new(),
            quarantined: 0,
            buffering: 0,
        }
    }

    /// Count an answer to a request no worker took (release ""), `waited` after arrival.
    pub fn count_made(&mut self, status: u16, waited: f64) {
        self.released.entry(String::new()).or_default().record(status, waited, None);
        self.dirty = true;
    }

    /// A gone worker's counts stay, under its release.
    pub fn keep_stats(&mut self, release: &str, stats: &RelStats) {
        match self.released.get_mut(release) {
            Some(kept) => kept.add(stats),
            None => {
                self.released.insert(release.to_string(), stats.clone());
            }
        }
    }

    /// Every release's counts: the gone workers' and the gateway's, plus the live workers'.
    pub fn release_stats(&self) -> HashMap<String, RelStats> {
        let mut all = self.released.clone();
        for wc in self.workers.values() {
            all.entry(wc.release.clone()).or_default().add(&wc.stats);
        }
        all
    }

    pub fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_insert(0) += 1;
        self.dirty = true;
    }

    /// A node-made answer to a request no worker took, `waited` seconds after its
    /// arrival: counted under release "" (its header names the live release).
    pub fn made(&mut self, node: &HeaderValue, status: u16, error: &str, detail: &str, retry: Option<u64>, waited: f64) -> Resp {
        self.count_made(status, waited);
        let mut resp = made(node, self.release_hv.as_ref(), status, error, detail, retry);
        if crate::access::enabled() {
            resp.extensions_mut().insert(crate::access::Queued(waited));
        }
        resp
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
            let at = Times { now, deadline: q.deadline, arrival: q.arrival };
            self.start(svc, gw, w, id, |out| out.extend_from_slice(&q.frame), q.body, q.reply, at, q.attempt);
        }
        self.placed = placed;
        self.dirty = true;
    }

    /// Start request `id` on worker `w`: its Req frame into the write buffer, its reply
    /// into the in-flight table, and its body pump when it has a body. A request the
    /// crash rule could retry (safe method, no body) keeps a copy of its frame.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        svc: &Arc<Service>,
        gw: &Gateway,
        w: u64,
        id: u64,
        write: impl FnOnce(&mut Vec<u8>),
        body: Option<ReqBody>,
        reply: oneshot::Sender<Resp>,
        at: Times,
        mut attempt: Attempt,
    ) {
        let max_body = self.spec.max_body;
        let Some(wc) = self.workers.get_mut(&w) else {
            // The router and the table change together under this lock: cannot happen.
            self.router.remove_worker(w);
            let _ = reply.send(made(&gw.node_hv, None, 502, "worker died", "the worker was gone", None));
            return;
        };
        let before = wc.out.len();
        wc.push(write);
        frames::set_remaining(&mut wc.out[before..], at.deadline - at.now);
        let frame = &wc.out[before..];
        if attempt.attempts == 0 {
            attempt.method = frames::req_key(frame).map_or("", |(m, _, _)| crate::crash::known_method(m));
        }
        attempt.attempts += 1;
        attempt.frame = (body.is_none() && crate::crash::safe(attempt.method)).then(|| frame.to_vec());
        if attempt.frame.is_none() && attempt.rid.is_none() {
            attempt.rid = frames::req_request_id(frame).map(Box::from);
        }
        let credit = body.map(|body| crate::body::start(svc, &gw.rt, w, id, body, max_body));
        let (dispatched, deadline, arrival) = (at.now, at.deadline, at.arrival);
        let reply = Reply::Waiting(reply);
        wc.inflight.insert(id, Inflight { reply, credit, dispatched, deadline, arrival, attempt, status: 0, recorded: false });
    }

    /// Running requests past their deadline: 504 (counted under their worker's release)
    /// and a Cancel to the worker.
    pub fn expire_running(&mut self, gw: &Gateway, now: f64) {
        let timeout = self.spec.deadline;
        for wc in self.workers.values_mut() {
            let mut cancel = Vec::new();
            for (id, i) in wc.inflight.iter_mut() {
                if i.deadline <= now && matches!(i.reply, Reply::Waiting(_)) {
                    if let Reply::Waiting(tx) = std::mem::replace(&mut i.reply, Reply::Finished) {
                        let detail = format!("the request ran past timeout={timeout}s and was cancelled");
                        let _ = tx.send(made(&gw.node_hv, Some(&wc.release_hv), 504, "deadline passed", &detail, None));
                    }
                    i.record(&mut wc.stats, 504, now);
                    cancel.push(*id);
                }
            }
            for id in cancel {
                self.dirty = true;
                wc.push(|o| frames::cancel(o, id));
            }
        }
    }

    /// The Stats message (control.rs `out::stats`) of this service now.
    pub fn stats_message(&self, gw: &Gateway, name: &str) -> Vec<u8> {
        let mut statuses = Vec::new();
        let mut histograms = Vec::new();
        for (release, rs) in self.release_stats() {
            for (status, n) in &rs.statuses {
                statuses.push((release.clone(), *status, *n));
            }
            histograms.push((release, rs.duration, rs.queue_wait));
        }
        let mut inflight = Vec::new();
        let mut served = Vec::new();
        for w in &self.router.workers {
            inflight.push((w.id, w.inflight as u64));
            served.push((w.id, w.served));
        }
        control::out::stats(&control::out::StatsMsg {
            service: name,
            queued: self.router.queue.len(),
            inflight,
            served,
            statuses,
            rejected: self.rejected.iter().map(|(r, n)| (*r, *n)).collect(),
            histograms,
            connections: gw.open_connections(),
            refused: Vec::new(),
            buffering: self.buffering,
        })
    }

    /// Put a request whose worker died back at the head of the queue (the crash rule's
    /// Retry): placed at once on a free slot, else first to get one. `frame` is its Req.
    pub fn retry(&mut self, svc: &Arc<Service>, gw: &Gateway, id: u64, reply: oneshot::Sender<Resp>, i: Inflight) {
        let mut attempt = i.attempt;
        let Some(frame) = attempt.frame.take() else { return };
        let now = gw.now();
        match self.router.submit(id, 0, i.deadline, now, true) {
            Decision::Placed(w) => {
                let at = Times { now, deadline: i.deadline, arrival: i.arrival };
                self.start(svc, gw, w, id, |out| out.extend_from_slice(&frame), None, reply, at, attempt);
            }
            Decision::Queued(_) => {
                let q = QueuedReq { frame, body: None, reply, arrival: i.arrival, deadline: i.deadline, attempt };
                self.queued.insert(id, q);
            }
            Decision::Rejected(..) => {} // never for a retry (front); the client sees the dropped reply as 502
        }
        self.dirty = true;
    }

    /// An identical request (method, raw path, query) crashed two workers within
    /// QUARANTINE_TTL: its 502. Called only while the quarantine is not empty.
    fn refuses(&mut self, gw: &Gateway, frame: &[u8], now: f64) -> Option<Resp> {
        let (method, raw_path, query) = frames::req_key(frame)?;
        let key = (method.to_vec(), raw_path.to_vec(), query.to_vec());
        let until = *self.quarantine.get(&key)?;
        if until <= now {
            self.quarantine.remove(&key);
            return None;
        }
        self.reject("quarantined");
        let detail = format!(
            "an identical request crashed two workers of {}; it is refused for {:.0}s — fix the handler and deploy",
            self.spec.release,
            crate::crash::QUARANTINE_TTL
        );
        Some(self.made(&gw.node_hv, 502, "quarantined", &detail, None, 0.0))
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
            inflight.record(&mut wc.stats, status, gw.now());
        }
        wc.push(|out| frames::cancel(out, id));
        if status == 413 {
            core.reject("too_large");
        }
        core.dirty = true;
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
    body: Option<ReqBody>,
    reply: oneshot::Sender<Resp>,
) -> Result<u64, Resp> {
    let mut core = svc.core.lock();
    if !core.spec.running {
        core.reject("stopped");
        let detail = format!("service {} is stopped — `anycore start {}`", svc.name, svc.name);
        return Err(core.made(&gw.node_hv, 503, "service stopped", &detail, Some(STOPPED_RETRY_AFTER), 0.0));
    }
    if size > core.spec.max_body {
        core.reject("too_large");
        let detail = format!("request body of {size} bytes exceeds max_body={}", core.spec.max_body);
        return Err(core.made(&gw.node_hv, 413, "payload too large", &detail, None, 0.0));
    }
    let now = gw.now();
    let deadline = now + core.spec.deadline;
    let id = gw.next_id.fetch_add(1, Ordering::Relaxed);
    // The quarantine is nearly always empty: only then is the frame encoded aside first.
    let mut early: Option<Vec<u8>> = None;
    let mut write = Some(write);
    if !core.quarantine.is_empty() {
        let mut frame = Vec::with_capacity(256);
        if let Some(write) = write.take() {
            write(&mut frame, id);
        }
        if let Some(refusal) = core.refuses(gw, &frame, now) {
            return Err(refusal);
        }
        early = Some(frame);
    }
    let at = Times { now, deadline, arrival: now };
    match core.router.submit(id, size, deadline, now, false) {
        Decision::Placed(w) => {
            match (early, write) {
                (Some(frame), _) => core.start(svc, gw, w, id, |out| out.extend_from_slice(&frame), body, reply, at, Attempt::default()),
                (None, Some(write)) => core.start(svc, gw, w, id, |out| write(out, id), body, reply, at, Attempt::default()),
                (None, None) => unreachable!("the frame is written once"),
            }
            core.dirty = true;
            Ok(id)
        }
        Decision::Queued(_) => {
            let frame = match (early, write) {
                (Some(frame), _) => frame,
                (None, Some(write)) => {
                    let mut frame = Vec::with_capacity(256);
                    write(&mut frame, id);
                    frame
                }
                (None, None) => unreachable!("the frame is written once"),
            };
            core.queued.insert(id, QueuedReq { frame, body, reply, arrival: now, deadline, attempt: Attempt::default() });
            core.dirty = true;
            crate::spill::queued(gw, svc, &mut core); // a peer's free slot, if the node knows one
            Ok(id)
        }
        Decision::Rejected(reason, retry_after) => {
            core.reject(reason.stat());
            let detail = format!("service {}: {}; retry after {retry_after}s", svc.name, reason.text());
            Err(core.made(&gw.node_hv, 503, "overloaded", &detail, Some(retry_after), 0.0))
        }
    }
}

pub const STOPPED_RETRY_AFTER: u64 = 5;

/// When a request is started: now, its deadline (from arrival), its arrival.
#[derive(Clone, Copy)]
pub struct Times {
    pub now: f64,
    pub deadline: f64,
    pub arrival: f64,
}

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
