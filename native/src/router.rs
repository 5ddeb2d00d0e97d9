//! The router's pure core: slot-aware placement and a bounded FIFO queue with deadlines.
//!
//! A line-by-line port of `src/anycore/router/core.py` (read its docstring for the
//! theory); the same property tests drive both (tests/unit/router/test_router.py runs
//! against this one through `anycore-gateway --router-model`, see `model.rs`).
//!
//! Each worker advertises `slots`. `submit` places a request on the least-loaded
//! accepting worker with a free slot; when none has one, the request waits in the
//! service's FIFO queue, bounded by count and by buffered bytes. `release` frees a slot;
//! `drain_queue` then gives free slots to the head of the queue. A request is refused at
//! once (503 + Retry-After) when the queue is full or its estimated wait (requests ahead
//! / accepting slots * mean service time) exceeds its deadline; `expire` removes queued
//! requests whose deadline passed (504). Nothing here does I/O or reads a clock: `now`
//! is a plain f64 of seconds passed in by the caller.
//!
//! Invariants: a worker never holds more requests than its slots; the queue never holds
//! more than `max_queue` requests nor `max_queue_bytes` bytes (retries put in front may
//! go over: they are never rejected); a request is never queued while an accepting
//! worker has a free slot.

use std::collections::VecDeque;

pub const GONE_KEPT: usize = 256; // removed workers whose served count is still answered

#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSlots {
    pub id: u64,
    pub slots: u32,
    pub inflight: u32,
    pub accepting: bool,
    pub served: u64,
}

impl WorkerSlots {
    pub fn free(&self) -> u32 {
        if self.accepting {
            self.slots.saturating_sub(self.inflight)
        } else {
            0
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pending<T> {
    pub item: T,
    pub size: u64,
    pub deadline: f64,
    pub enqueued_at: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    QueueFull,
    Deadline,
}

impl Reason {
    /// The Python router's reason text (in the 503 detail and the model's output).
    pub fn text(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue full",
            Reason::Deadline => "deadline cannot be met",
        }
    }
    /// The name in `stats.REJECT_REASONS` (the `Stats` message).
    pub fn stat(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::Deadline => "deadline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Placed(u64),
    Queued(usize),
    Rejected(Reason, u64),
}

#[derive(Debug)]
pub struct Router<T> {
    pub max_queue: usize,
    pub max_queue_bytes: u64,
    /// In insertion order (Python's dict order): the round-robin start rotates over it.
    pub workers: Vec<WorkerSlots>,
    pub queue: VecDeque<Pending<T>>,
    pub queued_bytes: u64,
    pub mean_service: f64,
    pub rejected: u64,
    pub expired: u64,
    pub served: u64,
    rr: usize,
    gone: VecDeque<(u64, u64)>,
}

impl<T: PartialEq> Router<T> {
    pub fn new(max_queue: usize, max_queue_bytes: u64) -> Self {
        Router {
            max_queue,
            max_queue_bytes,
            workers: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            mean_service: 0.0,
            rejected: 0,
            expired: 0,
            served: 0,
            rr: 0,
            gone: VecDeque::new(),
        }
    }

    // -- workers -------------------------------------------------------------------
    fn index(&self, id: u64) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    pub fn worker(&self, id: u64) -> Option<&WorkerSlots> {
        self.workers.iter().find(|w| w.id == id)
    }

    pub fn worker_mut(&mut self, id: u64) -> Option<&mut WorkerSlots> {
        self.workers.iter_mut().find(|w| w.id == id)
    }

    pub fn add_worker(&mut self, id: u64, slots: u32, accepting: bool) {
        let worker = WorkerSlots { id, slots, inflight: 0, accepting, served: 0 };
        match self.index(id) {
            Some(i) => {
                // Python's dict assignment keeps the key's place.
                self.workers[i] = worker;
            }
            None => self.workers.push(worker),
        }
    }

    pub fn set_accepting(&mut self, id: u64, accepting: bool) {
        if let Some(w) = self.worker_mut(id) {
            w.accepting = accepting;
        }
    }

    pub fn stop_accepting(&mut self, id: u64) {
        self.set_accepting(id, false);
    }

    pub fn remove_worker(&mut self, id: u64) {
        if let Some(i) = self.index(id) {
            let gone = self.workers.remove(i);
            if let Some(k) = self.gone.iter().position(|(w, _)| *w == id) {
                self.gone.remove(k);
            }
            self.gone.push_back((id, gone.served));
            if self.gone.len() > GONE_KEPT {
                self.gone.pop_front();
            }
        }
    }

    pub fn inflight_of(&self, id: u64) -> u32 {
        self.worker(id).map_or(0, |w| w.inflight)
    }

    pub fn served_by(&self, id: u64) -> u64 {
        match self.worker(id) {
            Some(w) => w.served,
            None => self.gone.iter().find(|(w, _)| *w == id).map_or(0, |(_, s)| *s),
        }
    }

    pub fn any_accepting(&self) -> bool {
        self.workers.iter().any(|w| w.accepting)
    }

    pub fn capacity(&self) -> u64 {
        self.workers.iter().filter(|w| w.accepting).map(|w| w.slots as u64).sum()
    }

    pub fn inflight(&self) -> u64 {
        self.workers.iter().map(|w| w.inflight as u64).sum()
    }

    pub fn free(&self) -> u64 {
        if self.queue.is_empty() {
            self.workers.iter().map(|w| w.free() as u64).sum()
        } else {
            0
        }
    }

    pub fn can_place(&self) -> bool {
        self.queue.is_empty() && self.workers.iter().any(|w| w.free() > 0)
    }

    // -- requests ------------------------------------------------------------------
    pub fn submit(&mut self, item: T, size: u64, deadline: f64, now: f64, front: bool) -> Decision {
        if front || self.queue.is_empty() {
            if let Some(i) = self.least_loaded() {
                let w = &mut self.workers[i];
                w.inflight += 1;
                return Decision::Placed(w.id);
            }
        }
        if !front && (self.queue.len() >= self.max_queue || self.queued_bytes + size > self.max_queue_bytes) {
            self.rejected += 1;
            return Decision::Rejected(Reason::QueueFull, self.retry_after(self.queue.len()));
        }
        if !front {
            if let Some(wait) = self.estimated_wait(self.queue.len() + 1) {
                if now + wait > deadline {
                    self.rejected += 1;
                    return Decision::Rejected(Reason::Deadline, self.retry_after(self.queue.len()));
                }
            }
        }
        let pending = Pending { item, size, deadline, enqueued_at: now };
        let position = if front {
            // Behind the retries with an earlier deadline only (see core.py).
            let position = self.queue.iter().take_while(|q| q.deadline < deadline).count();
            self.queue.insert(position, pending);
            position
        } else {
            self.queue.push_back(pending);
            self.queue.len() - 1
        };
        self.queued_bytes += size;
        Decision::Queued(position)
    }

    pub fn release(&mut self, id: u64, service_time: Option<f64>) {
        if let Some(w) = self.worker_mut(id) {
            w.inflight = w.inflight.saturating_sub(1);
            w.served += 1;
        }
        self.served += 1;
        if let Some(t) = service_time {
            self.mean_service = if self.mean_service == 0.0 { t } else { 0.9 * self.mean_service + 0.1 * t };
        }
    }

    /// Free slots to the head of the queue, in order: (item, worker) pairs into `out`.
    pub fn drain_queue_into(&mut self, out: &mut Vec<(T, u64)>) {
        while !self.queue.is_empty() {
            let Some(i) = self.least_loaded() else { break };
            let pending = self.queue.pop_front().expect("queue is not empty");
            self.queued_bytes -= pending.size;
            let w = &mut self.workers[i];
            w.inflight += 1;
            out.push((pending.item, w.id));
        }
    }

    pub fn drain_queue(&mut self) -> Vec<(T, u64)> {
        let mut out = Vec::new();
        self.drain_queue_into(&mut out);
        out
    }

    pub fn cancel(&mut self, item: &T) -> bool {
        match self.queue.iter().position(|p| p.item == *item) {
            Some(i) => {
                let pending = self.queue.remove(i).expect("index is in range");
                self.queued_bytes -= pending.size;
                true
            }
            None => false,
        }
    }

    pub fn expire_into(&mut self, now: f64, out: &mut Vec<T>) {
        let before = out.len();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for p in self.queue.drain(..) {
            if p.deadline <= now {
                self.queued_bytes -= p.size;
                out.push(p.item);
            } else {
                kept.push_back(p);
            }
        }
        self.queue = kept;
        self.expired += (out.len() - before) as u64;
    }

    pub fn expire(&mut self, now: f64) -> Vec<T> {
        let mut out = Vec::new();
        if self.queue.iter().any(|p| p.deadline <= now) {
            self.expire_into(now, &mut out);
        }
        out
    }

    pub fn next_deadline(&self) -> Option<f64> {
        self.queue.front().map(|p| p.deadline)
    }

    // -- internals -------------------------------------------------------------------
    fn least_loaded(&mut self) -> Option<usize> {
        let n = self.workers.len();
        self.rr = if n > 0 { (self.rr + 1) % n } else { 0 };
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let w = &self.workers[i];
            if w.free() == 0 {
                continue;
            }
            match best {
                None => best = Some(i),
                Some(b) => {
                    let b = &self.workers[b];
                    if (w.inflight as u64) * (b.slots as u64) < (b.inflight as u64) * (w.slots as u64) {
                        best = Some(i);
                    }
                }
            }
        }
        best
    }

    fn estimated_wait(&self, ahead: usize) -> Option<f64> {
        let capacity = self.capacity();
        if capacity == 0 || self.mean_service == 0.0 {
            return None;
        }
        Some(ahead as f64 / capacity as f64 * self.mean_service)
    }

    fn retry_after(&self, ahead: usize) -> u64 {
        let wait = match self.estimated_wait(ahead + 1) {
            Some(w) if w != 0.0 => w,
            _ => 1.0,
        };
        (wait.ceil() as u64).max(1)
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
