//! The control socket (`src/anycore/dataplane.py`): one SOCK_SEQPACKET datagram per
//! message, a msgpack array `[tag, fields...]`, file descriptors as SCM_RIGHTS on the same
//! datagram. This module decodes the node's messages into `ToGateway` and encodes ours;
//! `main.rs` applies them. Unknown tags are ignored (either side may be newer).

use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::os::unix::io::RawFd;

pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
}

impl Value {
    fn as_str(&self) -> Result<String, String> {
        match self {
            Value::Str(s) => Ok(s.clone()),
            Value::Bin(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            v => Err(format!("expected a string, got {v:?}")),
        }
    }
    fn as_int(&self) -> Result<i64, String> {
        match self {
            Value::Int(n) => Ok(*n),
            Value::Float(f) => Ok(*f as i64),
            v => Err(format!("expected an integer, got {v:?}")),
        }
    }
    fn as_float(&self) -> Result<f64, String> {
        match self {
            Value::Int(n) => Ok(*n as f64),
            Value::Float(f) => Ok(*f),
            v => Err(format!("expected a number, got {v:?}")),
        }
    }
    fn as_bytes(&self) -> Result<Vec<u8>, String> {
        match self {
            Value::Bin(b) => Ok(b.clone()),
            Value::Str(s) => Ok(s.clone().into_bytes()),
            v => Err(format!("expected bytes, got {v:?}")),
        }
    }
    fn as_bool(&self) -> Result<bool, String> {
        match self {
            Value::Bool(b) => Ok(*b),
            v => Err(format!("expected a boolean, got {v:?}")),
        }
    }
}

pub fn read_value(rd: &mut &[u8], depth: u32) -> Result<Value, String> {
    use rmp::Marker::*;
    if depth > 16 {
        return Err("message nested too deep".into());
    }
    let marker = rmp::decode::read_marker(rd).map_err(|_| "truncated message")?;
    let mut be = |k: usize| -> Result<u64, String> {
        if rd.len() < k {
            return Err("truncated message".into());
        }
        let mut n = 0u64;
        for b in &rd[..k] {
            n = (n << 8) | *b as u64;
        }
        *rd = &rd[k..];
        Ok(n)
    };
    let (kind, n) = match marker {
        Null => return Ok(Value::Nil),
        True => return Ok(Value::Bool(true)),
        False => return Ok(Value::Bool(false)),
        FixPos(n) => return Ok(Value::Int(n as i64)),
        FixNeg(n) => return Ok(Value::Int(n as i64)),
        U8 => return Ok(Value::Int(be(1)? as i64)),
        U16 => return Ok(Value::Int(be(2)? as i64)),
        U32 => return Ok(Value::Int(be(4)? as i64)),
        U64 => return Ok(Value::Int(be(8)? as i64)),
        I8 => return Ok(Value::Int(be(1)? as u8 as i8 as i64)),
        I16 => return Ok(Value::Int(be(2)? as u16 as i16 as i64)),
        I32 => return Ok(Value::Int(be(4)? as u32 as i32 as i64)),
        I64 => return Ok(Value::Int(be(8)? as i64)),
        F32 => return Ok(Value::Float(f32::from_bits(be(4)? as u32) as f64)),
        F64 => return Ok(Value::Float(f64::from_bits(be(8)?))),
        FixStr(n) => ('s', n as u64),
        Str8 => ('s', be(1)?),
        Str16 => ('s', be(2)?),
        Str32 => ('s', be(4)?),
        Bin8 => ('b', be(1)?),
        Bin16 => ('b', be(2)?),
        Bin32 => ('b', be(4)?),
        FixArray(n) => ('a', n as u64),
        Array16 => ('a', be(2)?),
        Array32 => ('a', be(4)?),
        m => return Err(format!("unsupported msgpack marker {m:?}")),
    };
    if kind == 'a' {
        let mut items = Vec::with_capacity(n.min(1024) as usize);
        for _ in 0..n {
            items.push(read_value(rd, depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    let n = n as usize;
    if rd.len() < n {
        return Err("truncated message".into());
    }
    let (bytes, rest) = rd.split_at(n);
    *rd = rest;
    Ok(if kind == 's' { Value::Str(String::from_utf8_lossy(bytes).into_owned()) } else { Value::Bin(bytes.to_vec()) })
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub routes: Vec<String>,
    pub release: String,
    pub running: bool,
    pub max_body: u64,
    pub max_queue: usize,
    pub max_queue_bytes: u64,
    pub deadline: f64,
    pub request_buffer: u64,
    pub body_timeout: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub node: String,
    pub max_connections: usize,
    pub header_limit: usize,
    pub header_timeout: f64,
    pub keepalive_timeout: f64,
    pub threads: usize,
    /// The first request id (0: 1). A gateway restarted in place starts past its
    /// predecessors' ids: a worker still finishing their requests answers ids it ignores.
    pub first_id: u64,
    /// `--access-log`: send a record of each finished exchange (access.rs).
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToGateway {
    Listen { address: String },
    Settings(Settings),
    Service(ServiceSpec),
    RemoveService { name: String },
    AddWorker { service: String, release: String, worker: u64, slots: u32 },
    Accepting { worker: u64, accepting: bool },
    RemoveWorker { worker: u64 },
    Shift { service: String, release: String },
    Shutdown { grace: f64 },
    /// PEM certificate chain and key: serve TLS on new connections (tls.rs).
    Tls { cert: Vec<u8>, key: Vec<u8> },
    /// Who may set X-Forwarded-For/-Proto (proxy.rs).
    ProxyHeaders { trusted: Vec<String> },
    // spill.rs (cluster spill-over), tags 20..24
    SpillSlots { service: String, free: usize },
    AddChannel { service: String, release: String, channel: u64 },
    Claimed { service: String, id: u64, channel: u64 },
    Reserve { service: String, token: u64 },
    Unreserve { worker: u64 },
    Unknown(i64),
}

pub fn decode(mut data: &[u8]) -> Result<ToGateway, String> {
    let Value::Array(v) = read_value(&mut data, 0)? else { return Err("a message is a msgpack array".into()) };
    let tag = v.first().ok_or("empty message")?.as_int()?;
    let need = |n: usize| -> Result<(), String> {
        if v.len() < n + 1 {
            Err(format!("message tag {tag}: {} fields, expected {n}", v.len() - 1))
        } else {
            Ok(())
        }
    };
    let f = |i: usize| &v[i + 1];
    Ok(match tag {
        1 => {
            need(1)?;
            ToGateway::Listen { address: f(0).as_str()? }
        }
        2 => {
            need(5)?;
            ToGateway::Settings(Settings {
                node: f(0).as_str()?,
                max_connections: f(1).as_int()?.max(1) as usize,
                header_limit: f(2).as_int()?.max(0) as usize,
                header_timeout: f(3).as_float()?,
                keepalive_timeout: f(4).as_float()?,
                threads: if v.len() > 6 { f(5).as_int()?.max(0) as usize } else { 0 },
                first_id: if v.len() > 7 { f(6).as_int()?.max(0) as u64 } else { 0 },
                access_log: v.len() > 8 && matches!(f(7), Value::Bool(true)),
            })
        }
        3 => {
            need(8)?;
            let Value::Array(routes) = f(1) else { return Err("Service.routes is a list".into()) };
            ToGateway::Service(ServiceSpec {
                name: f(0).as_str()?,
                routes: routes.iter().map(Value::as_str).collect::<Result<_, _>>()?,
                release: f(2).as_str()?,
                running: f(3).as_bool()?,
                max_body: f(4).as_int()?.max(0) as u64,
                max_queue: f(5).as_int()?.max(0) as usize,
                max_queue_bytes: f(6).as_int()?.max(0) as u64,
                deadline: f(7).as_float()?,
                request_buffer: if v.len() > 9 { f(8).as_int()?.max(0) as u64 } else { 64 * 1024 },
                body_timeout: if v.len() > 10 { f(9).as_float()? } else { 30.0 },
            })
        }
        4 => {
            need(1)?;
            ToGateway::RemoveService { name: f(0).as_str()? }
        }
        5 => {
            need(4)?;
            ToGateway::AddWorker {
                service: f(0).as_str()?,
                release: f(1).as_str()?,
                worker: f(2).as_int()? as u64,
                slots: f(3).as_int()?.max(0) as u32,
            }
        }
        6 => {
            need(2)?;
            ToGateway::Accepting { worker: f(0).as_int()? as u64, accepting: f(1).as_bool()? }
        }
        7 => {
            need(1)?;
            ToGateway::RemoveWorker { worker: f(0).as_int()? as u64 }
        }
        8 => {
            need(2)?;
            ToGateway::Shift { service: f(0).as_str()?, release: f(1).as_str()? }
        }
        9 => {
            need(1)?;
            ToGateway::Shutdown { grace: f(0).as_float()? }
        }
        15 => {
            need(2)?;
            ToGateway::Tls { cert: f(0).as_bytes()?, key: f(1).as_bytes()? }
        }
        16 => {
            need(1)?;
            let Value::Array(trusted) = f(0) else { return Err("ProxyHeaders.trusted is a list".into()) };
            ToGateway::ProxyHeaders { trusted: trusted.iter().map(Value::as_str).collect::<Result<_, _>>()? }
        }
        20 => {
            need(2)?;
            ToGateway::SpillSlots { service: f(0).as_str()?, free: f(1).as_int()?.max(0) as usize }
        }
        21 => {
            need(3)?;
            ToGateway::AddChannel { service: f(0).as_str()?, release: f(1).as_str()?, channel: f(2).as_int()? as u64 }
        }
        22 => {
            need(3)?;
            ToGateway::Claimed { service: f(0).as_str()?, id: f(1).as_int()? as u64, channel: f(2).as_int()? as u64 }
        }
        23 => {
            need(2)?;
            ToGateway::Reserve { service: f(0).as_str()?, token: f(1).as_int()? as u64 }
        }
        24 => {
            need(1)?;
            ToGateway::Unreserve { worker: f(0).as_int()? as u64 }
        }
        n => ToGateway::Unknown(n),
    })
}

/// Receives one datagram and its fds. `Ok(None)`: the node closed its end.
pub type Datagram = (Vec<u8>, Vec<RawFd>);

pub fn receive(fd: RawFd) -> Result<Option<Datagram>, String> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs() {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        fds.extend(r);
                    }
                }
                let n = msg.bytes;
                if n == 0 && fds.is_empty() {
                    return Ok(None);
                }
                buf.truncate(n);
                return Ok(Some((buf, fds)));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("control socket: {e}")),
        }
    }
}

/// Sends one message (a whole datagram; safe from any thread).
pub fn send(fd: RawFd, data: &[u8]) {
    let iov = [std::io::IoSlice::new(data)];
    loop {
        match sendmsg::<()>(fd, &iov, &[], MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return, // a closed control socket ends the gateway through the reader
        }
    }
}

pub mod out {
    //! gateway -> node messages (tags 50..).
    use crate::frames::{w_array, w_str, w_uint};

    pub fn started(version: &str, threads: usize) -> Vec<u8> {
        let mut o = Vec::new();
        w_array(&mut o, 3);
        w_uint(&mut o, 50);
        w_str(&mut o, version);
        w_uint(&mut o, threads as u64);
        o
    }

    pub struct StatsMsg<'a> {
        pub service: &'a str,
        pub queued: usize,
        pub inflight: Vec<(u64, u64)>,
        pub served: Vec<(u64, u64)>,
        pub statuses: Vec<(String, u16, u64)>,
        pub rejected: Vec<(&'static str, u64)>,
        /// (release, duration, queue wait): per bucket of `gateway::BUCKETS`, cumulative.
        pub histograms: Vec<(String, crate::stats::Hist, crate::stats::Hist)>,
        pub connections: u64,
        /// (status, count), cumulative: the connections' own refusals (service "" only).
        pub refused: Vec<(u16, u64)>,
        /// Bytes of max_queue_bytes held by bodies being read now (gateway::BodyReservation).
        pub buffering: u64,
    }

    pub fn stats(s: &StatsMsg) -> Vec<u8> {
        let mut o = Vec::new();
        w_array(&mut o, 11);
        w_uint(&mut o, 51);
        w_str(&mut o, s.service);
        w_uint(&mut o, s.queued as u64);
        for list in [&s.inflight, &s.served] {
            w_array(&mut o, list.len() as u32);
            for (a, b) in list.iter() {
                w_array(&mut o, 2);
                w_uint(&mut o, *a);
                w_uint(&mut o, *b);
            }
        }
        w_array(&mut o, s.statuses.len() as u32);
        for (release, status, n) in &s.statuses {
            w_array(&mut o, 3);
            w_str(&mut o, release);
            w_uint(&mut o, *status as u64);
            w_uint(&mut o, *n);
        }
        w_array(&mut o, s.rejected.len() as u32);
        for (reason, n) in &s.rejected {
            w_array(&mut o, 2);
            w_str(&mut o, reason);
            w_uint(&mut o, *n);
        }
        w_array(&mut o, s.histograms.len() as u32);
        for (release, duration, queue_wait) in &s.histograms {
            w_array(&mut o, 5);
            w_str(&mut o, release);
            for h in [duration, queue_wait] {
                w_array(&mut o, h.counts.len() as u32);
                for n in &h.counts {
                    w_uint(&mut o, *n);
                }
                let _ = rmp::encode::write_f64(&mut o, h.sum);
            }
        }
        w_uint(&mut o, s.connections);
        w_array(&mut o, s.refused.len() as u32);
        for (status, n) in &s.refused {
            w_array(&mut o, 2);
            w_uint(&mut o, *status as u64);
            w_uint(&mut o, *n);
        }
        w_uint(&mut o, s.buffering);
        o
    }

    pub fn worker_idle(worker: u64) -> Vec<u8> {
        let mut o = Vec::new();
        w_array(&mut o, 2);
        w_uint(&mut o, 52);
        w_uint(&mut o, worker);
        o
    }

    /// RequestCrashed (60): the crash rule's verdict on a request of a dead worker.
    pub fn request_crashed(service: &str, worker: u64, outcome: &str, method: &str, path: &[u8], blame: f64,
                           request_id: &[u8]) -> Vec<u8> {
        let mut o = Vec::new();
        w_array(&mut o, 8);
        w_uint(&mut o, 60);
        w_str(&mut o, service);
        w_uint(&mut o, worker);
        w_str(&mut o, outcome);
        w_str(&mut o, method);
        w_str(&mut o, &String::from_utf8_lossy(path));
        let _ = rmp::encode::write_f64(&mut o, blame);
        w_str(&mut o, &String::from_utf8_lossy(request_id));
        o
    }

    /// Shifted (67): a Shift is applied; every request placed from now on goes to `release`.
    pub fn shifted(service: &str, release: &str) -> Vec<u8> {
        let mut o = Vec::new();
        w_array(&mut o, 3);
        w_uint(&mut o, 67);
        w_str(&mut o, service);
        w_str(&mut o, release);
        o
    }

    pub fn worker_lost(worker: u64, inflight: u64) -> Vec<u8> {
        let mut o = Vec::new();
        w_array(&mut o, 3);
        w_uint(&mut o, 53);
        w_uint(&mut o, worker);
        w_uint(&mut o, inflight);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bytes from `anycore.dataplane.encode(...)` (msgspec), pasted.
    #[test]
    fn messages_as_the_node_encodes_them_decode() {
        let settings = b"\x97\x02\xa2n1d\xce\x00\x01\x00\x00\xcb@$\x00\x00\x00\x00\x00\x00\xcb@\x14\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(
            decode(settings).unwrap(),
            ToGateway::Settings(Settings {
                node: "n1".into(),
                max_connections: 100,
                header_limit: 65536,
                header_timeout: 10.0,
                keepalive_timeout: 5.0,
                threads: 0,
                first_id: 0,
                access_log: false
            })
        );
        let service = b"\x99\x03\xa3app\x92\xa1/\xach.example/v1\xa2r1\xc3\xce\x00\x10\x00\x00d\xce\x04\x00\x00\x00\xcb@>\x00\x00\x00\x00\x00\x00";
        let ToGateway::Service(spec) = decode(service).unwrap() else { panic!("not a Service") };
        assert_eq!((spec.routes, spec.max_body, spec.max_queue, spec.deadline), (vec!["/".to_string(), "h.example/v1".to_string()], 1 << 20, 100, 30.0));
        assert_eq!((spec.request_buffer, spec.body_timeout), (64 * 1024, 30.0)); // an older node: the defaults
        let newer = b"\x9b\x03\xa3app\x91\xa1/\xa2r1\xc3\xce\x00\x10\x00\x00d\xce\x04\x00\x00\x00\xcb@>\x00\x00\x00\x00\x00\x00\x04\xcb?\xf8\x00\x00\x00\x00\x00\x00";
        let ToGateway::Service(spec) = decode(newer).unwrap() else { panic!("not a Service") };
        assert_eq!((spec.request_buffer, spec.body_timeout), (4, 1.5));
        assert_eq!(
            decode(b"\x95\x05\xa3app\xa2r1\x07\x08").unwrap(),
            ToGateway::AddWorker { service: "app".into(), release: "r1".into(), worker: 7, slots: 8 }
        );
        assert_eq!(decode(b"\x92\t\xcb@\x04\x00\x00\x00\x00\x00\x00").unwrap(), ToGateway::Shutdown { grace: 2.5 });
        assert_eq!(decode(b"\x93\x0f\xc4\x01C\xc4\x01K").unwrap(), ToGateway::Tls { cert: b"C".to_vec(), key: b"K".to_vec() });
        assert_eq!(
            decode(b"\x92\x10\x92\xa9127.0.0.1\xa1*").unwrap(),
            ToGateway::ProxyHeaders { trusted: vec!["127.0.0.1".into(), "*".into()] }
        );
    }

    #[test]
    fn unknown_tags_are_ignored_and_garbage_is_an_error() {
        assert_eq!(decode(b"\x92\x28\xc0").unwrap(), ToGateway::Unknown(40));
        assert!(decode(b"\x93\x05\xa3ap").is_err());
        assert!(decode(b"\x05").is_err());
        assert!(decode(b"\x92\x07").is_err()); // RemoveWorker without its field
    }
}
