//! Cluster spill-over on the native gateway: a request that would wait in this node's
//! queue runs on a peer's free slot, and a peer's request runs on a free slot here.
//!
//! The node keeps the cluster (heartbeats, claims over NATS, relaying frames: the same
//! `cluster/agent.py` as under the Python gateway); the gateway keeps placement. They meet
//! in five messages (`src/anycore/dataplane.py`, tags 20..24 and 65..66):
//!
//! Origin side (a request leaves this node only when a peer has a free slot):
//! - `SpillSlots(service, free)`: the peers' free slots for the service, as the node
//!   estimates them. While it is above the requests on offer, the oldest queued requests
//!   not on offer are offered: `Offer(service, id, remaining, req)` with the request's
//!   Req frame. An offered request *stays in the queue*: a local slot freed meanwhile
//!   still takes it (locality first), and its body is not read.
//! - `Claimed(service, id, channel)`: the node's claim on a peer. `channel` 0: refused,
//!   the request stays where it is in the queue (nothing to undo); for a request already
//!   on a channel whose peer was lost, 0 sends it back to the head of the queue (the crash
//!   rule's retry: only a body-less one, unanswered, is kept for that). Otherwise the peer
//!   holds a slot for it: if it is still queued it leaves the queue and starts on the
//!   *channel*, else (placed here, expired, its client left) the channel gets a Cancel
//!   for it, which the node relays to the peer.
//! - `AddChannel(service, release, channel)` + fd: a pseudo-worker whose data socket is
//!   a socketpair to the node. It is not in the router (placement never picks it); once a
//!   request starts on it, it is served exactly like one on a worker: the Req, body under
//!   credit, Resp/Body/Done back, Cancel, the running deadline, 504. The node relays those
//!   frames to and from the peer. One channel per release a peer runs (the
//!   `anycore-release` of its answers); the peer's answers carry their own `anycore-node`.
//!
//! Runner side (a peer's claim takes a slot here only if one is free now):
//! - `Reserve(service, token)`: if the router can place now (a free accepting slot, an
//!   empty queue) one slot of the least-loaded worker is taken for the node, which runs
//!   the peer's request on that worker over its control socket; else refused. Answer:
//!   `Reserved(token, worker, free)` (worker 0: refused; free: what is left).
//! - `Unreserve(worker)`: that request finished; the slot goes back (to the queue's head).
//!
//! Lock order: a service's `core`, then `STATE`.

use crate::control::{out, ToGateway};
use crate::frames::{self, w_array, w_bin, w_str, w_uint};
use crate::gateway::{Core, Gateway, QueuedReq, Reply, Service, Times, WorkerConn};
use crate::router::Decision;
use crate::worker;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::os::unix::io::{FromRawFd, RawFd};
use std::sync::{Arc, OnceLock};

pub const OFFER: u64 = 65;
pub const RESERVED: u64 = 66;
/// Items the router holds for a reservation: never a request id (those count up from 1).
const RESERVATION: u64 = u64::MAX;

#[derive(Default)]
struct SpillState {
    free: usize,
    offered: HashSet<u64>,
    /// Body-less requests running on a channel, with their Req frame: the node may send
    /// them back (a lost peer, the crash rule's retry), to the head of the queue.
    retry: HashMap<u64, (u64, Vec<u8>)>,
}

static STATE: OnceLock<Mutex<HashMap<String, SpillState>>> = OnceLock::new();

fn state() -> &'static Mutex<HashMap<String, SpillState>> {
    STATE.get_or_init(Default::default)
}

/// A request was just queued (called by `gateway::place` under the service's lock).
pub fn queued(gw: &Gateway, svc: &Service, core: &mut Core) {
    offer_more(gw, svc, core);
}

/// Offer queued requests while the peers' free slots exceed those on offer.
fn offer_more(gw: &Gateway, svc: &Service, core: &mut Core) {
    let mut states = state().lock();
    let Some(st) = states.get_mut(&svc.name) else { return };
    if st.offered.len() >= st.free || core.router.queue.is_empty() {
        return;
    }
    let now = gw.now();
    let mut messages = Vec::new();
    for pending in core.router.queue.iter() {
        if st.offered.len() >= st.free {
            break;
        }
        if st.offered.contains(&pending.item) {
            continue;
        }
        let Some(q) = core.queued.get(&pending.item) else { continue };
        if q.frame.len() < 4 || q.frame.len() > 60 * 1024 {
            continue; // a head too large for one control message stays local
        }
        st.offered.insert(pending.item);
        messages.push(offer(&svc.name, pending.item, pending.deadline - now, &q.frame[4..]));
    }
    drop(states);
    for m in messages {
        // A datagram of a few hundred bytes to the node, which reads its socket at once:
        // the same blocking send the ticker and the readers use.
        gw.send(&m);
    }
}

fn offer(service: &str, id: u64, remaining: f64, req: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(req.len() + 64);
    w_array(&mut o, 5);
    w_uint(&mut o, OFFER);
    w_str(&mut o, service);
    w_uint(&mut o, id);
    let _ = rmp::encode::write_f64(&mut o, remaining.max(0.0));
    w_bin(&mut o, req);
    o
}

fn reserved(token: u64, worker: u64, free: u64) -> Vec<u8> {
    let mut o = Vec::new();
    w_array(&mut o, 4);
    w_uint(&mut o, RESERVED);
    w_uint(&mut o, token);
    w_uint(&mut o, worker);
    w_uint(&mut o, free);
    o
}

/// The node's spill messages (`main::apply` hands them here).
pub fn apply(gw: &'static Gateway, message: ToGateway, fds: Vec<RawFd>) {
    match message {
        ToGateway::SpillSlots { service, free } => {
            crate::close_all(&fds);
            let Some(svc) = gw.service(&service) else { return };
            let mut core = svc.core.lock();
            state().lock().entry(service).or_default().free = free;
            offer_more(gw, &svc, &mut core);
        }
        ToGateway::Claimed { service, id, channel } => {
            crate::close_all(&fds);
            let Some(svc) = gw.service(&service) else { return };
            let mut core = svc.core.lock();
            let back = state().lock().get_mut(&service).and_then(|st| {
                st.offered.remove(&id);
                st.retry.remove(&id)
            });
            if channel != 0 {
                claimed(gw, &svc, &mut core, id, channel);
            } else if let Some((on, frame)) = back {
                requeue(gw, &svc, &mut core, id, on, frame);
            }
        }
        ToGateway::AddChannel { service, release, channel } => add_channel(gw, &service, release, channel, fds),
        ToGateway::Reserve { service, token } => {
            crate::close_all(&fds);
            let answer = match gw.service(&service) {
                Some(svc) => reserve(gw, &svc),
                None => (0, 0),
            };
            gw.send(&reserved(token, answer.0, answer.1));
        }
        ToGateway::Unreserve { worker } => {
            crate::close_all(&fds);
            let Some(svc) = gw.workers.lock().get(&worker).cloned() else { return };
            let idle = {
                let mut core = svc.core.lock();
                core.router.release(worker, None);
                core.dirty = true;
                core.drain(&svc, gw);
                core.workers.get(&worker).is_some_and(|wc| !wc.node_accepting && wc.inflight.is_empty())
            };
            if idle {
                gw.send(&out::worker_idle(worker));
            }
        }
        _ => crate::close_all(&fds),
    }
}

/// A peer holds a slot for request `id`: start it on `channel` if it still waits here.
fn claimed(gw: &Gateway, svc: &Arc<Service>, core: &mut Core, id: u64, channel: u64) {
    let deadline = core.router.queue.iter().find(|p| p.item == id).map(|p| p.deadline);
    let waiting = deadline.is_some() && core.queued.contains_key(&id) && core.workers.contains_key(&channel);
    if !waiting {
        // Placed here meanwhile, expired, or its client left: the peer's slot is let go.
        if let Some(wc) = core.workers.get_mut(&channel) {
            wc.push(|out| frames::cancel(out, id));
        }
        return;
    }
    core.router.cancel(&id);
    let Some(q) = core.queued.remove(&id) else { return };
    let now = gw.now();
    if q.body.is_none() {
        let mut states = state().lock();
        let st = states.entry(svc.name.clone()).or_default();
        // What finished since is forgotten here: the table holds what runs on channels now.
        st.retry.retain(|id, (on, _)| core.workers.get(on).is_some_and(|wc| wc.inflight.contains_key(id)));
        st.retry.insert(id, (channel, q.frame.clone()));
    }
    let at = Times { now, deadline: q.deadline, arrival: q.arrival };
    core.start(svc, gw, channel, id, |out| out.extend_from_slice(&q.frame), q.body, q.reply, at, q.attempt);
    core.dirty = true;
}

/// The node sends a request back from its channel (its peer was lost before answering,
/// and the crash rule allows a retry): to the head of the queue, or a free slot now.
fn requeue(gw: &Gateway, svc: &Arc<Service>, core: &mut Core, id: u64, channel: u64, frame: Vec<u8>) {
    let Some(wc) = core.workers.get_mut(&channel) else { return };
    let Some(inflight) = wc.inflight.remove(&id) else { return };
    let Reply::Waiting(reply) = inflight.reply else { return }; // answered meanwhile: nothing to retry
    let now = gw.now();
    match core.router.submit(id, 0, inflight.deadline, now, true) {
        Decision::Placed(w) => {
            let at = Times { now, deadline: inflight.deadline, arrival: inflight.arrival };
            core.start(svc, gw, w, id, |out| out.extend_from_slice(&frame), None, reply, at, inflight.attempt)
        }
        Decision::Queued(_) => {
            let (arrival, deadline, attempt) = (inflight.arrival, inflight.deadline, inflight.attempt);
            core.queued.insert(id, QueuedReq { frame, body: None, reply, arrival, deadline, attempt });
        }
        Decision::Rejected(..) => {} // never for a retry put in front; the reply drops: 502 "no response"
    }
    core.dirty = true;
}

/// One slot of the least-loaded worker for a peer's request, if one is free now.
fn reserve(gw: &Gateway, svc: &Service) -> (u64, u64) {
    let mut core = svc.core.lock();
    if !core.spec.running || !core.router.can_place() {
        return (0, 0);
    }
    let now = gw.now();
    match core.router.submit(RESERVATION, 0, f64::INFINITY, now, false) {
        Decision::Placed(w) => {
            core.dirty = true;
            (w, core.router.free())
        }
        _ => (0, 0), // cannot happen after can_place; nothing was queued for a reservation
    }
}

fn add_channel(gw: &'static Gateway, service: &str, release: String, channel: u64, fds: Vec<RawFd>) {
    let Some(&cfd) = fds.first() else {
        eprintln!("anycore-gateway: AddChannel {channel} came without its socket");
        return;
    };
    crate::close_all(&fds[1..]);
    let Some(svc) = gw.service(service) else {
        crate::close_all(&fds[..1]);
        return;
    };
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(cfd) };
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    {
        let mut core = svc.core.lock();
        // accepting, never reported idle (the node removes it); not in the router: nothing is placed on it
        core.workers.insert(channel, WorkerConn::new(release, wake.clone(), cfd, 16 * 1024));
    }
    gw.workers.lock().insert(channel, svc.clone());
    worker::serve(gw, svc, channel, stream, wake);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_and_reserved_encode_as_the_node_decodes_them() {
        // [65, "slow", 7, 1.5, b"\x01"] and [66, 3, 9, 0] as msgspec encodes them.
        assert_eq!(offer("slow", 7, 1.5, b"\x01"), b"\x95\x41\xa4slow\x07\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\xc4\x01\x01".to_vec());
        assert_eq!(reserved(3, 9, 0), b"\x94\x42\x03\x09\x00".to_vec());
    }
}
