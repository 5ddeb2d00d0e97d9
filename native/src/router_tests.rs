//! Unit and property tests of the router core (the Python suite runs against it too,
//! through `--router-model`).
use super::*;
use proptest::prelude::*;

fn router() -> Router<u64> {
    Router::new(100, 1 << 30)
}

#[test]
fn placement_goes_to_the_least_loaded_relative_to_slots() {
    let mut r = router();
    r.add_worker(1, 2, true);
    r.add_worker(2, 8, true);
    r.worker_mut(1).unwrap().inflight = 1;
    r.worker_mut(2).unwrap().inflight = 3;
    assert_eq!(r.submit(0, 1, 100.0, 0.0, false), Decision::Placed(2));
}

#[test]
fn equally_loaded_workers_take_turns() {
    let mut r = router();
    for w in 1..=3 {
        r.add_worker(w, 100, true);
    }
    let mut placed: Vec<u64> = (0..3)
        .map(|i| match r.submit(i, 1, 100.0, 0.0, false) {
            Decision::Placed(w) => w,
            d => panic!("{d:?}"),
        })
        .collect();
    placed.sort();
    assert_eq!(placed, vec![1, 2, 3]);
}

#[test]
fn the_queue_is_fifo_bounded_and_expires() {
    let mut r: Router<u64> = Router::new(2, 1000);
    r.add_worker(1, 1, true);
    assert_eq!(r.submit(0, 1, 10.0, 0.0, false), Decision::Placed(1));
    assert_eq!(r.submit(1, 5, 10.0, 0.0, false), Decision::Queued(0));
    assert_eq!(r.submit(2, 5, 20.0, 0.0, false), Decision::Queued(1));
    assert_eq!(r.submit(3, 5, 20.0, 0.0, false), Decision::Rejected(Reason::QueueFull, 1));
    assert_eq!(r.expire(10.0), vec![1]);
    assert_eq!((r.queued_bytes, r.expired, r.rejected), (5, 1, 1));
    r.release(1, Some(0.5));
    assert_eq!(r.drain_queue(), vec![(2, 1)]);
    assert!(r.queue.is_empty() && r.queued_bytes == 0);
}

#[test]
fn a_deadline_that_cannot_be_met_is_rejected_and_retries_never_are() {
    let mut r: Router<u64> = Router::new(1, 10);
    r.add_worker(1, 1, true);
    r.submit(0, 1, 1e9, 0.0, false);
    r.release(1, Some(4.0));
    r.drain_queue();
    r.submit(1, 1, 1e9, 0.0, false);
    assert_eq!(r.submit(2, 1, 3.0, 0.0, false), Decision::Rejected(Reason::Deadline, 4));
    assert_eq!(r.submit(3, 1, 1e9, 0.0, false), Decision::Queued(0));
    assert_eq!(r.submit(4, 50, 1.0, 0.0, true), Decision::Queued(0));
    assert_eq!(r.queue.iter().map(|p| p.item).collect::<Vec<_>>(), vec![4, 3]);
}

#[derive(Clone, Debug)]
enum Op {
    Add(u32, bool),
    Accept(u8, bool),
    Remove(u8),
    Submit(u64),
    Retry(u8),
    Release(u8, f64),
    Drain,
    Cancel(u8),
    Expire(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..4, any::<bool>()).prop_map(|(s, a)| Op::Add(s, a)),
        (0u8..8, any::<bool>()).prop_map(|(w, a)| Op::Accept(w, a)),
        (0u8..8).prop_map(Op::Remove),
        (0u64..120).prop_map(Op::Submit),
        (0u8..60).prop_map(Op::Retry),
        (0u8..8, 0.0f64..8.0).prop_map(|(w, t)| Op::Release(w, t)),
        Just(Op::Drain),
        (0u8..60).prop_map(Op::Cancel),
        (0u8..6).prop_map(Op::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn invariants_hold_under_random_operations(
        max_queue in 1usize..6, max_bytes in 1u64..300, ops in prop::collection::vec(op(), 0..60)
    ) {
        let mut r: Router<u64> = Router::new(max_queue, max_bytes);
        let (mut now, mut next_item, mut next_worker) = (0.0f64, 0u64, 0u64);
        let mut running: Vec<(u64, Vec<u64>)> = Vec::new(); // worker -> items
        let mut lost: Vec<(u64, u64, f64)> = Vec::new(); // (item, size, deadline)
        let mut retried: Vec<u64> = Vec::new();
        let mut sizes = std::collections::HashMap::new();
        for op in ops {
            match op {
                Op::Add(slots, acc) => { r.add_worker(next_worker, slots, acc); running.push((next_worker, vec![])); next_worker += 1; }
                Op::Accept(w, a) => r.set_accepting(w as u64, a),
                Op::Remove(w) => {
                    r.remove_worker(w as u64);
                    if let Some(i) = running.iter().position(|(id, _)| *id == w as u64) {
                        for item in running.remove(i).1 { lost.push((item, sizes[&item], now)); }
                    }
                }
                Op::Submit(size) => {
                    let item = next_item; next_item += 1; sizes.insert(item, size);
                    let before = r.queue.len();
                    match r.submit(item, size, now + 10.0, now, false) {
                        Decision::Placed(w) => { prop_assert_eq!(before, 0); running.iter_mut().find(|(id, _)| *id == w).unwrap().1.push(item); }
                        Decision::Queued(p) => prop_assert_eq!(p, before),
                        Decision::Rejected(_, after) => prop_assert!(after >= 1),
                    }
                }
                Op::Retry(k) => {
                    if !lost.is_empty() {
                        let (item, size, deadline) = lost.remove(k as usize % lost.len());
                        match r.submit(item, size, deadline, now, true) {
                            Decision::Placed(w) => running.iter_mut().find(|(id, _)| *id == w).unwrap().1.push(item),
                            Decision::Queued(_) => retried.push(item),
                            Decision::Rejected(..) => prop_assert!(false, "a retry was rejected"),
                        }
                    }
                }
                Op::Release(w, t) => {
                    if let Some((_, items)) = running.iter_mut().find(|(id, items)| *id == w as u64 && !items.is_empty()) {
                        items.remove(0);
                        r.release(w as u64, Some(t));
                    }
                }
                Op::Drain => {
                    for (item, w) in r.drain_queue() { running.iter_mut().find(|(id, _)| *id == w).unwrap().1.push(item); }
                    prop_assert!(r.queue.is_empty() || r.workers.iter().all(|w| w.free() == 0));
                }
                Op::Cancel(item) => { r.cancel(&(item as u64)); }
                Op::Expire(dt) => { now += [0.0, 0.5, 1.0, 2.5, 5.0, 10.0][dt as usize]; for item in r.expire(now) { prop_assert!(r.queue.iter().all(|p| p.item != item)); } }
            }
            // invariants
            for w in &r.workers {
                prop_assert!(w.inflight <= w.slots);
                let mine = &running.iter().find(|(id, _)| *id == w.id).unwrap().1;
                prop_assert_eq!(w.inflight as usize, mine.len());
            }
            prop_assert_eq!(r.queued_bytes, r.queue.iter().map(|p| p.size).sum::<u64>());
            let regular: Vec<&Pending<u64>> = r.queue.iter().filter(|p| !retried.contains(&p.item)).collect();
            prop_assert!(regular.len() <= max_queue);
            prop_assert!(regular.iter().map(|p| p.size).sum::<u64>() <= max_bytes);
            let items: Vec<u64> = regular.iter().map(|p| p.item).collect();
            let mut sorted = items.clone(); sorted.sort();
            prop_assert_eq!(items, sorted);
            let deadlines: Vec<f64> = r.queue.iter().map(|p| p.deadline).collect();
            prop_assert!(deadlines.windows(2).all(|d| d[0] <= d[1]));
            prop_assert_eq!(r.next_deadline(), deadlines.first().copied());
        }
    }
}
