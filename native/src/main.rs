//! `anycore-gateway`: anycore's native data plane. The node (control plane, Python)
//! starts it with `--control-fd 3` and tells it, over that socket (see
//! `src/anycore/dataplane.py`), which sockets to listen on, which services and routes
//! exist, and which workers (with their data sockets) take requests. It serves HTTP on
//! a multi-thread tokio runtime and speaks `anycore.wire` frames to the workers.
//!
//! Threads: `Settings.threads`, or by default half the cores this process may use (at
//! least one). A trivial request costs the workers about as much CPU as the gateway, so
//! on a machine whose workers are busy the other half of the cores is theirs; the
//! node's `--gateway-threads` overrides the rule.
//!
//! `anycore-gateway --router-model` runs the router core on text operations from stdin
//! instead (the Python property tests drive it, see `model.rs`).

mod access;
mod body;
mod control;
mod crash;
mod frames;
mod gateway;
mod h1;
mod handoff;
mod http;
mod h2;
mod h2ws;
mod model;
mod parse;
mod proxy;
mod requestid;
mod router;
mod stats;
mod tls;
mod spill;
mod worker;

use control::{out, ToGateway};
use gateway::{Core, Gateway, Service, WorkerConn};
use std::os::unix::io::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub static GATEWAY: OnceLock<Gateway> = OnceLock::new();
const VERSION: &str = env!("CARGO_PKG_VERSION");
const TICK: Duration = Duration::from_millis(20);

fn usage() -> ! {
    eprintln!("usage: anycore-gateway --control-fd N | --router-model | --check-tls CERT KEY | --version\n(the node starts it: `anycore up --gateway native`)");
    std::process::exit(2);
}

pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut fd: Option<RawFd> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--router-model" => std::process::exit(model::run()),
            "--version" => {
                println!("anycore-gateway {VERSION}");
                return;
            }
            "--check-tls" if i + 2 < args.len() => std::process::exit(tls::check(&args[i + 1], &args[i + 2])),
            "--control-fd" => {
                fd = args.get(i + 1).and_then(|s| s.parse().ok());
                i += 1;
            }
            _ => usage(),
        }
        i += 1;
    }
    let Some(fd) = fd else { usage() };
    run(fd);
}

fn receive_or_exit(fd: RawFd) -> (ToGateway, Vec<RawFd>) {
    loop {
        match control::receive(fd) {
            Ok(Some((data, fds))) => match control::decode(&data) {
                Ok(message) => return (message, fds),
                Err(e) => {
                    eprintln!("anycore-gateway: ignored a malformed control message: {e}");
                    close_all(&fds);
                }
            },
            Ok(None) => std::process::exit(0), // the node is gone: nothing to serve for
            Err(e) => {
                eprintln!("anycore-gateway: {e}; exiting");
                std::process::exit(1);
            }
        }
    }
}

pub(crate) fn close_all(fds: &[RawFd]) {
    for fd in fds {
        let _ = nix::unistd::close(*fd);
    }
}

fn run(fd: RawFd) {
    let mut early = Vec::new();
    let settings = loop {
        match receive_or_exit(fd) {
            (ToGateway::Settings(s), fds) => {
                close_all(&fds);
                break s;
            }
            other => early.push(other),
        }
    };
    let threads = if settings.threads > 0 { settings.threads } else { default_threads() };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("anycore-gateway")
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("anycore-gateway: cannot start the runtime: {e}");
            std::process::exit(1)
        });
    let (shutdown, _) = tokio::sync::watch::channel(false);
    access::set(settings.access_log);
    let first_id = settings.first_id.max(1);
    let gw = Gateway {
        node_hv: gateway::static_value(&settings.node),
        connections: Arc::new(tokio::sync::Semaphore::new(settings.max_connections)),
        settings,
        control_fd: fd,
        epoch: Instant::now(),
        rt: rt.handle().clone(),
        next_id: AtomicU64::new(first_id),
        services: Default::default(),
        workers: Default::default(),
        routes: parking_lot::RwLock::new(Arc::new(gateway::Routes { entries: Vec::new() })),
        routes_gen: AtomicU64::new(0),
        starting: AtomicBool::new(true),
        shutdown,
        unrouted: Default::default(),
    };
    if GATEWAY.set(gw).is_err() {
        unreachable!("the gateway is made once");
    }
    let gw: &'static Gateway = GATEWAY.get().expect("just set");
    gw.send(&out::started(VERSION, threads));
    rt.spawn(ticker(gw));
    for (message, fds) in early {
        apply(gw, message, fds);
    }
    loop {
        let (message, fds) = receive_or_exit(fd);
        apply(gw, message, fds);
    }
}

fn apply(gw: &'static Gateway, message: ToGateway, fds: Vec<RawFd>) {
    match message {
        ToGateway::Listen { address } => {
            let Some(&lfd) = fds.first() else {
                eprintln!("anycore-gateway: Listen {address} came without its socket");
                return;
            };
            close_all(&fds[1..]);
            let listener = unsafe { std::net::TcpListener::from_raw_fd(lfd) };
            gw.rt.spawn(http::accept_loop(gw, listener));
        }
        ToGateway::Settings(_) => close_all(&fds), // only the first one counts
        ToGateway::Service(spec) => {
            close_all(&fds);
            let live = !spec.release.is_empty() && spec.running;
            let svc = {
                let mut services = gw.services.lock();
                services
                    .entry(spec.name.clone())
                    .or_insert_with(|| Arc::new(Service { name: spec.name.clone(), core: parking_lot::Mutex::new(Core::new(spec.clone())) }))
                    .clone()
            };
            {
                let mut core = svc.core.lock();
                if core.spec.release != spec.release {
                    core.release_hv = (!spec.release.is_empty()).then(|| gateway::static_value(&spec.release));
                }
                core.router.max_queue = spec.max_queue;
                core.router.max_queue_bytes = spec.max_queue_bytes;
                let stopped = core.spec.running && !spec.running;
                core.spec = spec;
                core.recompute_all();
                if stopped {
                    fail_queued(gw, &svc, &mut core, "was stopped");
                }
                core.drain(&svc, gw);
                core.dirty = true;
            }
            if live {
                gw.starting.store(false, Ordering::Relaxed);
            }
            gw.rebuild_routes();
        }
        ToGateway::RemoveService { name } => {
            close_all(&fds);
            let svc = gw.services.lock().remove(&name);
            if let Some(svc) = svc {
                let mut core = svc.core.lock();
                fail_queued(gw, &svc, &mut core, "was removed");
            }
            gw.rebuild_routes();
        }
        ToGateway::AddWorker { service, release, worker, slots } => {
            let Some(&wfd) = fds.first() else {
                eprintln!("anycore-gateway: AddWorker {worker} came without its data socket");
                return;
            };
            close_all(&fds[1..]);
            let Some(svc) = gw.service(&service) else {
                eprintln!("anycore-gateway: AddWorker {worker} for unknown service {service}: closed");
                close_all(&fds);
                return;
            };
            let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(wfd) };
            if stream.set_nonblocking(true).is_err() {
                return;
            }
            let wake = Arc::new(tokio::sync::Notify::new());
            {
                let mut core = svc.core.lock();
                core.workers.insert(worker, WorkerConn::new(release, wake.clone(), wfd, 64 * 1024));
                core.router.add_worker(worker, slots, false);
                core.recompute(worker);
                core.dirty = true;
            }
            gw.workers.lock().insert(worker, svc.clone());
            worker::serve(gw, svc.clone(), worker, stream, wake);
            let mut core = svc.core.lock();
            core.drain(&svc, gw);
        }
        ToGateway::Accepting { worker, accepting } => {
            close_all(&fds);
            let Some(svc) = gw.workers.lock().get(&worker).cloned() else { return };
            let idle = {
                let mut core = svc.core.lock();
                let Some(wc) = core.workers.get_mut(&worker) else { return };
                wc.node_accepting = accepting;
                let idle = !accepting && wc.inflight.is_empty();
                core.recompute(worker);
                core.drain(&svc, gw);
                core.dirty = true;
                idle
            };
            if idle {
                gw.send(&out::worker_idle(worker));
            }
        }
        ToGateway::RemoveWorker { worker } => {
            close_all(&fds);
            let svc = gw.workers.lock().get(&worker).cloned();
            if let Some(svc) = svc {
                worker::lost(gw, &svc, worker, false);
            }
        }
        ToGateway::Shift { service, release } => {
            close_all(&fds);
            let applied = out::shifted(&service, &release); // the node logs the shift on it
            if let Some(svc) = gw.service(&service) {
                let mut core = svc.core.lock();
                core.release_hv = (!release.is_empty()).then(|| gateway::static_value(&release));
                core.spec.release = release;
                core.recompute_all();
                core.drain(&svc, gw);
                core.dirty = true;
                if core.spec.running && !core.spec.release.is_empty() {
                    gw.starting.store(false, Ordering::Relaxed);
                }
            }
            gw.send(&applied);
        }
        ToGateway::Shutdown { grace } => {
            close_all(&fds);
            let _ = gw.shutdown.send(true);
            let max = gw.settings.max_connections;
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs_f64(grace.max(0.0));
                while Instant::now() < until && gw.connections.available_permits() < max {
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::process::exit(0);
            });
        }
        ToGateway::Tls { cert, key } => {
            close_all(&fds);
            if let Err(e) = tls::set(&cert, &key) {
                eprintln!("anycore-gateway: TLS certificate refused ({e}); new connections keep the previous one");
            }
        }
        ToGateway::ProxyHeaders { trusted } => {
            close_all(&fds);
            proxy::set(proxy::Trust::parse(&trusted));
        }
        m @ (ToGateway::SpillSlots { .. }
        | ToGateway::AddChannel { .. }
        | ToGateway::Claimed { .. }
        | ToGateway::Reserve { .. }
        | ToGateway::Unreserve { .. }) => spill::apply(gw, m, fds),
        ToGateway::Unknown(_) => close_all(&fds),
    }
}

fn fail_queued(gw: &Gateway, svc: &Arc<Service>, core: &mut Core, what: &str) {
    let ids: Vec<u64> = core.router.queue.iter().map(|p| p.item).collect();
    let detail = format!("service {} {what} — `anycore start {}`", svc.name, svc.name);
    let now = gw.now();
    for id in ids {
        core.router.cancel(&id);
        if let Some(q) = core.queued.remove(&id) {
            core.reject("stopped");
            let retry = Some(gateway::STOPPED_RETRY_AFTER);
            let resp = core.made(&gw.node_hv, 503, "service stopped", &detail, retry, now - q.arrival);
            let _ = q.reply.send(resp);
        }
    }
}

/// Every TICK: queued requests past their deadline get 504; every 5th, running ones
/// past it too (504 and a Cancel to the worker), and Stats go out for what changed.
async fn ticker(gw: &'static Gateway) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    let mut connections = u64::MAX;
    let mut expired = Vec::new();
    loop {
        interval.tick().await;
        round += 1;
        access::flush(gw);
        let now = gw.now();
        let services: Vec<Arc<Service>> = gw.services.lock().values().cloned().collect();
        // A change in the open connections goes out with every service's Stats.
        let open = if round % 5 == 0 { gw.open_connections() } else { connections };
        let moved = open != connections;
        connections = open;
        for svc in services {
            let message = {
                let mut core = svc.core.lock();
                if core.router.next_deadline().is_some_and(|d| d <= now) {
                    core.router.expire_into(now, &mut expired);
                    let detail = format!("no worker of {} became free within timeout={}s", svc.name, core.spec.deadline);
                    for id in expired.drain(..) {
                        if let Some(q) = core.queued.remove(&id) {
                            core.reject("deadline");
                            let waited = now - q.arrival;
                            let resp = core.made(&gw.node_hv, 504, "deadline passed while queued", &detail, None, waited);
                            let _ = q.reply.send(resp);
                        }
                    }
                    core.dirty = true;
                }
                if round % 5 != 0 {
                    continue;
                }
                core.expire_running(gw, now);
                if !core.dirty && !moved {
                    continue;
                }
                core.dirty = false;
                core.stats_message(gw, &svc.name)
            };
            gw.send(&message);
        }
        if round % 5 == 0 {
            if let Some(message) = gw.unrouted_stats() {
                gw.send(&message);
            }
        }
    }
}
