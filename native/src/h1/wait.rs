//! What an idle connection waits on: the gateway's shutdown, and its one deadline.

use super::Gateway;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// The gateway's shutdown as idle connections wait for it: a flag, and Notify shards, so
/// that the wait each idle connection registers (a lock) is shared by 1/SHARDS of them,
/// not by every connection on every thread (a `watch` receiver per connection would be).
pub(super) struct Stop {
    flag: AtomicBool,
    shards: Vec<Notify>,
}

const SHARDS: usize = 64;
static STOP: OnceLock<Stop> = OnceLock::new();
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl Stop {
    /// The gateway's Stop (the first call starts the task that watches `gw.shutdown`),
    /// and a shard for one connection.
    pub(super) fn get(gw: &'static Gateway) -> (&'static Stop, usize) {
        let stop = STOP.get_or_init(|| {
            let mut rx = gw.shutdown.subscribe();
            gw.rt.spawn(async move {
                while !*rx.borrow() {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                if let Some(stop) = STOP.get() {
                    stop.flag.store(true, Ordering::Release);
                    for shard in &stop.shards {
                        shard.notify_waiters();
                    }
                }
            });
            Stop { flag: AtomicBool::new(false), shards: (0..SHARDS).map(|_| Notify::new()).collect() }
        });
        (stop, NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS)
    }

    /// The gateway is shutting down: a connection between requests closes.
    pub(super) fn stopping(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Shard `i`'s Notify: woken once when the shutdown begins.
    pub(super) fn shard(&self, i: usize) -> &Notify {
        &self.shards[i]
    }
}

/// One deadline per connection on one `Sleep` (see the module's header).
pub(super) struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    due: Instant,
    step: Duration,
}

impl Timer {
    /// `step`: the shortest of the usual delays (`set` with a shorter one resets the sleep).
    pub(super) fn new(step: Duration, first: Duration) -> Self {
        let now = Instant::now();
        Timer { sleep: Box::pin(tokio::time::sleep_until(now + step)), armed: now + step, due: now + first, step }
    }

    /// A store, unless `after` is shorter than `step` (a body timeout below the others).
    pub(super) fn set(&mut self, after: Duration) {
        self.due = Instant::now() + after;
        if self.due < self.armed {
            self.armed = self.due;
            self.sleep.as_mut().reset(self.due);
        }
    }

    pub(super) async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            let now = Instant::now();
            if now >= self.due {
                return;
            }
            self.armed = self.due.min(now + self.step);
            self.sleep.as_mut().reset(self.armed);
        }
    }
}
