//! `anycore-gateway --router-model`: the router core driven by text operations on stdin,
//! so the Python property tests (tests/unit/router/test_router.py) run against the Rust
//! port exactly as against `router/core.py`.
//!
//! One operation per line, space-separated; one JSON line back per operation:
//! `{"r": result, "s": state}` where state is everything the tests inspect (workers,
//! queue, counters and the derived values computed by the Rust code). Items are integers
//! (the Python adapter maps its items to them). Operations:
//!   new MAX_QUEUE MAX_QUEUE_BYTES | limits MAX_QUEUE MAX_QUEUE_BYTES
//!   add W SLOTS 0|1 | accept W 0|1 | stop W | remove W | set_inflight W N
//!   submit ITEM SIZE DEADLINE NOW 0|1 | release W SECONDS|none | drain | cancel ITEM
//!   expire NOW | served_by W | inflight_of W
//! A malformed line gets `{"error": "..."}`: the adapter raises it.

use crate::router::{Decision, Router};
use std::fmt::Write as _;
use std::io::{BufRead, Write};

fn f(x: f64) -> String {
    format!("{x:?}")
}

fn state(r: &Router<i64>) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("{\"workers\":[");
    for (i, w) in r.workers.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "[{},{},{},{},{}]", w.id, w.slots, w.inflight, w.accepting, w.served);
    }
    s.push_str("],\"queue\":[");
    for (i, p) in r.queue.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "[{},{},{},{}]", p.item, p.size, f(p.deadline), f(p.enqueued_at));
    }
    let next = r.next_deadline().map_or("null".to_string(), f);
    let _ = write!(
        s,
        "],\"queued_bytes\":{},\"mean_service\":{},\"rejected\":{},\"expired\":{},\"served\":{},\
         \"max_queue\":{},\"max_queue_bytes\":{},\"capacity\":{},\"inflight\":{},\"free\":{},\
         \"can_place\":{},\"any_accepting\":{},\"next_deadline\":{}}}",
        r.queued_bytes,
        f(r.mean_service),
        r.rejected,
        r.expired,
        r.served,
        r.max_queue,
        r.max_queue_bytes,
        r.capacity(),
        r.inflight(),
        r.free(),
        r.can_place(),
        r.any_accepting(),
        next
    );
    s
}

fn step(r: &mut Router<i64>, line: &str) -> Result<String, String> {
    let mut it = line.split_ascii_whitespace();
    let op = it.next().ok_or("empty line")?;
    let mut arg = || it.next().ok_or_else(|| format!("{op}: missing argument"));
    fn num<N: std::str::FromStr>(s: &str) -> Result<N, String> {
        s.parse().map_err(|_| format!("not a number: {s}"))
    }
    let flag = |s: &str| s == "1";
    Ok(match op {
        "new" | "limits" => {
            let (q, b) = (num(arg()?)?, num(arg()?)?);
            if op == "new" {
                *r = Router::new(q, b);
            } else {
                r.max_queue = q;
                r.max_queue_bytes = b;
            }
            "null".into()
        }
        "add" => {
            let (w, slots, acc) = (num(arg()?)?, num(arg()?)?, flag(arg()?));
            r.add_worker(w, slots, acc);
            "null".into()
        }
        "accept" => {
            let (w, acc) = (num(arg()?)?, flag(arg()?));
            r.set_accepting(w, acc);
            "null".into()
        }
        "stop" => {
            r.stop_accepting(num(arg()?)?);
            "null".into()
        }
        "remove" => {
            r.remove_worker(num(arg()?)?);
            "null".into()
        }
        "set_inflight" => {
            let (w, n): (u64, u32) = (num(arg()?)?, num(arg()?)?);
            if let Some(w) = r.worker_mut(w) {
                w.inflight = n;
            }
            "null".into()
        }
        "submit" => {
            let (item, size, deadline, now, front) =
                (num(arg()?)?, num(arg()?)?, num(arg()?)?, num(arg()?)?, flag(arg()?));
            match r.submit(item, size, deadline, now, front) {
                Decision::Placed(w) => format!("[\"placed\",{w}]"),
                Decision::Queued(p) => format!("[\"queued\",{p}]"),
                Decision::Rejected(reason, after) => format!("[\"rejected\",\"{}\",{after}]", reason.text()),
            }
        }
        "release" => {
            let w = num(arg()?)?;
            let t = arg()?;
            r.release(w, if t == "none" { None } else { Some(num(t)?) });
            "null".into()
        }
        "drain" => {
            let placed = r.drain_queue();
            let parts: Vec<String> = placed.iter().map(|(i, w)| format!("[{i},{w}]")).collect();
            format!("[{}]", parts.join(","))
        }
        "cancel" => r.cancel(&num(arg()?)?).to_string(),
        "expire" => {
            let items = r.expire(num(arg()?)?);
            let parts: Vec<String> = items.iter().map(|i| i.to_string()).collect();
            format!("[{}]", parts.join(","))
        }
        "served_by" => r.served_by(num(arg()?)?).to_string(),
        "inflight_of" => r.inflight_of(num(arg()?)?).to_string(),
        _ => return Err(format!("unknown operation {op}")),
    })
}

pub fn run() -> i32 {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut r: Router<i64> = Router::new(100, 1 << 30);
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return 1 };
        let reply = match step(&mut r, &line) {
            Ok(result) => format!("{{\"r\":{result},\"s\":{}}}", state(&r)),
            Err(e) => format!("{{\"error\":{e:?}}}"),
        };
        if writeln!(out, "{reply}").and_then(|_| out.flush()).is_err() {
            return 1;
        }
    }
    0
}
