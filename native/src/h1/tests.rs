//! One connection in memory (a duplex pipe for the socket) on a paused clock, against
//! a gateway with no services: every request is answered by the gateway itself.
use super::*;
use crate::control::Settings;
use std::sync::atomic::{AtomicBool, AtomicU64};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn gateway() -> &'static Gateway {
    let settings = Settings {
        node: "n1".into(),
        max_connections: 10,
        header_limit: 4096,
        header_timeout: 10.0,
        keepalive_timeout: 5.0,
        threads: 1,
        first_id: 0,
        access_log: false,
    };
    let (shutdown, _) = tokio::sync::watch::channel(false);
    Box::leak(Box::new(Gateway {
        node_hv: gateway::static_value(&settings.node),
        connections: Arc::new(tokio::sync::Semaphore::new(settings.max_connections)),
        settings,
        control_fd: -1,
        epoch: std::time::Instant::now(),
        rt: tokio::runtime::Handle::current(),
        next_id: AtomicU64::new(1),
        services: Default::default(),
        workers: Default::default(),
        routes: parking_lot::RwLock::new(Arc::new(gateway::Routes { entries: Vec::new() })),
        routes_gen: AtomicU64::new(0),
        starting: AtomicBool::new(false),
        unrouted: Default::default(),
        shutdown,
    }))
}

/// Sends `input` (then keeps the pipe open), returns all the gateway wrote until it
/// closed, and the virtual time that took.
async fn exchange(input: &[u8]) -> (String, Duration) {
    let gw = gateway();
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let info = Arc::new(ConnInfo {
        gw,
        client_ip: "127.0.0.1".into(),
        client_port: 1,
        server_ip: String::new(),
        server_port: 0,
        scheme: "http",
    });
    let started = Instant::now();
    tokio::spawn(serve(server, info, None));
    client.write_all(input).await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

fn statuses(out: &str) -> Vec<&str> {
    let code = |c: &str| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit());
    out.match_indices("HTTP/1.1 ").map(|(i, _)| out.get(i + 9..i + 12).unwrap_or("")).filter(|c| code(c)).collect()
}

#[tokio::test(start_paused = true)]
async fn answers_come_in_order_and_a_refusal_closes() {
    let (out, _) = exchange(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(statuses(&out), ["404", "400"], "{out}"); // nothing after the refusal is read
    assert!(out.contains("an HTTP/1.1 request needs a Host header") && out.ends_with("}"), "{out}");
    assert!(out.contains("connection: close"));
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stops_coming_is_408_after_the_header_timeout() {
    let (out, took) = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    assert_eq!(statuses(&out), ["408"], "{out}");
    assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(11), "{took:?}");
    let (out, took) = exchange(b"").await; // never a byte: closed, nothing said
    assert_eq!((out.as_str(), took.as_secs()), ("", 10));
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_closes_after_the_keepalive_timeout() {
    let (out, took) = exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(statuses(&out), ["404"]);
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(6), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn http10_and_head_are_framed_for_their_client() {
    let (out, took) = exchange(b"HEAD / HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    assert!(out.contains("content-length: ") && out.ends_with("connection: close\r\n\r\n"), "{out}");
    assert!(took < Duration::from_secs(1)); // HTTP/1.0 without keep-alive: closed at once
}

#[tokio::test(start_paused = true)]
async fn a_body_the_loop_saw_out_of_credit_wakes_for_credit_that_came_since() {
    // The wedge: the exchange loop looked, saw no credit and stopped reading the socket;
    // a worker's reader (another thread) then added credit before the wait began.
    let gate = crate::gateway::CreditGate::new();
    gate.avail.store(0, Ordering::Release);
    let started = Started { worker: 1, gate: gate.clone(), max_body: 1 << 30 };
    let mut upload = Upload::Pumping(started, Left::Length(10), 0);
    gate.add(5);
    let woke = tokio::time::timeout(Duration::from_secs(1), next_in(&mut upload, false)).await;
    assert!(matches!(woke, Ok(InEvent::Credit)), "the loop must be woken to read again");
    // Having seen credit, the loop reads the socket: nothing to wait for here.
    assert!(tokio::time::timeout(Duration::from_secs(1), next_in(&mut upload, true)).await.is_err());
}
