//! The worker frames of `src/anycore/wire.py`, encoded and decoded by hand with `rmp`'s
//! primitives (no serde on the hot path, no allocation per frame: encoders append to
//! the worker's pending write buffer, the decoder slices the read buffer).
//!
//! Each frame: 4-byte big-endian length, then a msgpack array `[tag, fields...]`
//! (msgspec `array_like=True` structs with `tag=N`). Gateway -> worker: Req (1), Body (2),
//! Credit (3), Cancel (4). Worker -> gateway: Resp (6), Body (2), Credit (3), Done (7).
//! WINDOW and CHUNK are wire.py's credit window and chunk size.

use bytes::Bytes;
use rmp::encode;

pub const WINDOW: i64 = 1024 * 1024;
pub const CHUNK: usize = 64 * 1024;
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

pub const REQ: u8 = 1;
pub const BODY: u8 = 2;
pub const CREDIT: u8 = 3;
pub const CANCEL: u8 = 4;
pub const RESP: u8 = 6;
pub const DONE: u8 = 7;

/// Appends a frame to `out`: reserve the length prefix, write, patch it.
pub fn frame(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    write(out);
    let n = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&n.to_be_bytes());
}

// Writes to a Vec<u8> cannot fail: the results are ignored on purpose.
pub fn w_uint(out: &mut Vec<u8>, n: u64) {
    let _ = encode::write_uint(out, n);
}
pub fn w_str(out: &mut Vec<u8>, s: &str) {
    let _ = encode::write_str(out, s);
}
pub fn w_bin(out: &mut Vec<u8>, b: &[u8]) {
    let _ = encode::write_bin(out, b);
}
pub fn w_array(out: &mut Vec<u8>, n: u32) {
    let _ = encode::write_array_len(out, n);
}
pub fn w_bool(out: &mut Vec<u8>, b: bool) {
    let _ = encode::write_bool(out, b);
}
pub fn w_nil(out: &mut Vec<u8>) {
    let _ = encode::write_nil(out);
}

pub fn body(out: &mut Vec<u8>, id: u64, data: &[u8], more: bool) {
    frame(out, |o| {
        w_array(o, 4);
        w_uint(o, BODY as u64);
        w_uint(o, id);
        w_bin(o, data);
        w_bool(o, more);
    });
}

pub fn credit(out: &mut Vec<u8>, id: u64, n: u64) {
    frame(out, |o| {
        w_array(o, 3);
        w_uint(o, CREDIT as u64);
        w_uint(o, id);
        w_uint(o, n);
    });
}

pub fn cancel(out: &mut Vec<u8>, id: u64) {
    frame(out, |o| {
        w_array(o, 2);
        w_uint(o, CANCEL as u64);
        w_uint(o, id);
    });
}

/// A Req's last field, `remaining` (wire.Req: seconds left before its deadline when it
/// started; 0.0 "not said"): a float64 placeholder, 9 bytes, so the frame can be written
/// once (at admission, maybe queued for a while) and the value set as it starts.
pub fn w_remaining(out: &mut Vec<u8>) {
    let _ = encode::write_f64(out, 0.0);
}

/// Set `remaining` in a whole Req frame (length prefix included) written with
/// `w_remaining`: a 15-field array ending in a float64. Any other frame is left as it is.
pub fn set_remaining(frame: &mut [u8], seconds: f64) {
    let n = frame.len();
    if n < 4 + 1 + 9 || frame[4] != 0x9f || frame[n - 9] != 0xcb {
        return;
    }
    let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
    frame[n - 8..].copy_from_slice(&seconds.to_be_bytes());
}

/// A str or bin field at the front of `rd`, consumed.
fn bytes_field<'a>(rd: &mut &'a [u8]) -> Option<&'a [u8]> {
    let marker = rmp::decode::read_marker(rd).ok()?;
    use rmp::Marker::*;
    let (k, n) = match marker {
        FixStr(n) => (0, n as usize),
        Str8 | Bin8 => (1, 0),
        Str16 | Bin16 => (2, 0),
        Str32 | Bin32 => (4, 0),
        _ => return None,
    };
    let n = if k == 0 { n } else { rd.get(..k)?.iter().fold(0usize, |a, b| (a << 8) | *b as usize) };
    let bytes = rd.get(k..k + n)?;
    *rd = &rd[k + n..];
    Some(bytes)
}

/// The fields after a whole Req frame's id (length prefix included), None if it is not a Req.
fn req_fields(frame: &[u8]) -> Option<&[u8]> {
    let mut rd = frame.get(4..)?;
    rmp::decode::read_array_len(&mut rd).ok()?;
    if rmp::decode::read_int::<u64, _>(&mut rd).ok()? != REQ as u64 {
        return None;
    }
    rmp::decode::read_int::<u64, _>(&mut rd).ok()?;
    Some(rd)
}

/// (method, raw_path, query) of a whole Req frame (length prefix included), as the
/// gateway encoded it: the crash rule's method and the quarantine's key. None if `frame`
/// is not a Req.
pub fn req_key(frame: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let mut rd = req_fields(frame)?;
    let method = bytes_field(&mut rd)?;
    bytes_field(&mut rd)?; // path
    let raw_path = bytes_field(&mut rd)?;
    let query = bytes_field(&mut rd)?;
    Some((method, raw_path, query))
}

/// The request id of a whole Req frame as the gateway encoded it: its last header
/// (`http.rs` appends `x-request-id` after the client's), for the node's crash lines.
pub fn req_request_id(frame: &[u8]) -> Option<&[u8]> {
    let mut rd = req_fields(frame)?;
    for _ in 0..4 {
        bytes_field(&mut rd)?; // method, path, raw_path, query
    }
    let headers = rmp::decode::read_array_len(&mut rd).ok()?;
    let mut last = None;
    for _ in 0..headers {
        if rmp::decode::read_array_len(&mut rd).ok()? != 2 {
            return None;
        }
        let name = bytes_field(&mut rd)?;
        let value = bytes_field(&mut rd)?;
        last = Some((name, value));
    }
    last.filter(|(name, _)| name.eq_ignore_ascii_case(crate::requestid::HEADER.as_bytes())).map(|(_, v)| v)
}

/// A frame from a worker, its byte fields sliced out of the read buffer.
#[derive(Debug)]
pub enum FromWorker {
    Resp { id: u64, status: u16, headers: Vec<(Bytes, Bytes)>, body: Bytes, more: bool },
    Body { id: u64, data: Bytes, more: bool },
    Credit { id: u64, n: u64 },
    Done { id: u64, error: Option<String> },
    Other,
}

#[derive(Debug)]
pub struct Malformed;

struct Reader<'a> {
    whole: &'a Bytes,
    rd: &'a [u8],
}

impl<'a> Reader<'a> {
    fn pos(&self) -> usize {
        self.whole.len() - self.rd.len()
    }
    fn array(&mut self) -> Result<u32, Malformed> {
        rmp::decode::read_array_len(&mut self.rd).map_err(|_| Malformed)
    }
    fn uint(&mut self) -> Result<u64, Malformed> {
        rmp::decode::read_int(&mut self.rd).map_err(|_| Malformed)
    }
    fn boolean(&mut self) -> Result<bool, Malformed> {
        rmp::decode::read_bool(&mut self.rd).map_err(|_| Malformed)
    }
    fn take(&mut self, n: usize) -> Result<Bytes, Malformed> {
        if self.rd.len() < n {
            return Err(Malformed);
        }
        let at = self.pos();
        self.rd = &self.rd[n..];
        Ok(self.whole.slice(at..at + n))
    }
    fn bin(&mut self) -> Result<Bytes, Malformed> {
        // msgspec writes bytes as bin; accept str too (same bytes).
        let marker = rmp::decode::read_marker(&mut self.rd).map_err(|_| Malformed)?;
        let n = self.len_of(marker)?;
        self.take(n)
    }
    fn len_of(&mut self, marker: rmp::Marker) -> Result<usize, Malformed> {
        use rmp::Marker::*;
        let mut be = |k: usize| -> Result<usize, Malformed> {
            if self.rd.len() < k {
                return Err(Malformed);
            }
            let mut n = 0usize;
            for b in &self.rd[..k] {
                n = (n << 8) | *b as usize;
            }
            self.rd = &self.rd[k..];
            Ok(n)
        };
        match marker {
            FixStr(n) => Ok(n as usize),
            Str8 | Bin8 => be(1),
            Str16 | Bin16 => be(2),
            Str32 | Bin32 => be(4),
            _ => Err(Malformed),
        }
    }
    fn opt_str(&mut self) -> Result<Option<String>, Malformed> {
        let marker = rmp::decode::read_marker(&mut self.rd).map_err(|_| Malformed)?;
        if marker == rmp::Marker::Null {
            return Ok(None);
        }
        let n = self.len_of(marker)?;
        let b = self.take(n)?;
        Ok(Some(String::from_utf8_lossy(&b).into_owned()))
    }
}

/// Decodes one frame payload (without its length prefix).
pub fn decode(payload: &Bytes) -> Result<FromWorker, Malformed> {
    let mut r = Reader { whole: payload, rd: &payload[..] };
    let n = r.array()?;
    let tag = r.uint()?;
    Ok(match tag as u8 {
        RESP if n >= 5 => {
            let id = r.uint()?;
            let status = r.uint()? as u16;
            let count = r.array()?;
            let mut headers = Vec::with_capacity(count as usize);
            for _ in 0..count {
                if r.array()? != 2 {
                    return Err(Malformed);
                }
                let name = r.bin()?;
                let value = r.bin()?;
                headers.push((name, value));
            }
            let body = r.bin()?;
            let more = r.boolean()?;
            FromWorker::Resp { id, status, headers, body, more }
        }
        BODY if n >= 4 => {
            let id = r.uint()?;
            let data = r.bin()?;
            let more = r.boolean()?;
            FromWorker::Body { id, data, more }
        }
        CREDIT if n >= 3 => FromWorker::Credit { id: r.uint()?, n: r.uint()? },
        DONE if n >= 3 => FromWorker::Done { id: r.uint()?, error: r.opt_str()? },
        _ => FromWorker::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_decoder() {
        let mut out = Vec::new();
        body(&mut out, 7, b"abc", true);
        let payload = Bytes::copy_from_slice(&out[4..]);
        assert_eq!(u32::from_be_bytes(out[..4].try_into().unwrap()) as usize, payload.len());
        match decode(&payload).unwrap() {
            FromWorker::Body { id, data, more } => assert_eq!((id, &data[..], more), (7, &b"abc"[..], true)),
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn a_resp_frame_as_msgspec_writes_it_decodes() {
        // msgspec: Resp(id=3, status=200, headers=[(b"a", b"b")], body=b"hi", more=False)
        let payload = Bytes::from_static(b"\x96\x06\x03\xcc\xc8\x91\x92\xc4\x01a\xc4\x01b\xc4\x02hi\xc2");
        match decode(&payload).unwrap() {
            FromWorker::Resp { id, status, headers, body, more } => {
                assert_eq!((id, status, more, &body[..]), (3, 200, false, &b"hi"[..]));
                assert_eq!(headers, vec![(Bytes::from_static(b"a"), Bytes::from_static(b"b"))]);
            }
            f => panic!("{f:?}"),
        }
        let done = Bytes::from_static(b"\x93\x07\x03\xc0");
        assert!(matches!(decode(&done).unwrap(), FromWorker::Done { id: 3, error: None }));
        assert!(decode(&Bytes::from_static(b"\x93\x07")).is_err());
    }

    #[test]
    fn remaining_is_set_in_place_and_only_in_a_15_field_req() {
        let mut out = Vec::new();
        frame(&mut out, |o| {
            w_array(o, 15);
            w_uint(o, REQ as u64);
            w_remaining(o);
        });
        set_remaining(&mut out, 2.5);
        assert_eq!(&out[out.len() - 8..], &2.5f64.to_be_bytes());
        set_remaining(&mut out, f64::INFINITY); // no deadline: "not said"
        assert_eq!(&out[out.len() - 8..], &0.0f64.to_be_bytes());
        let mut other = Vec::new();
        frame(&mut other, |o| {
            w_array(o, 14);
            w_uint(o, REQ as u64);
            w_remaining(o);
        });
        let before = other.clone();
        set_remaining(&mut other, 2.5);
        assert_eq!(other, before);
    }

    /// A Req frame's fields up to its headers, as http.rs writes them.
    fn req(method: &str, path: &str, raw_path: &[u8], query: &[u8], headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        frame(&mut out, |o| {
            w_array(o, 15);
            w_uint(o, REQ as u64);
            w_uint(o, 300);
            w_str(o, method);
            w_str(o, path);
            w_bin(o, raw_path);
            w_bin(o, query);
            w_array(o, headers.len() as u32);
            for (name, value) in headers {
                w_array(o, 2);
                w_bin(o, name);
                w_bin(o, value);
            }
        });
        out
    }

    #[test]
    fn a_req_frame_gives_its_method_raw_path_and_query() {
        let out = req("GET", "/a b", b"/a%20b", &[b'q'; 40], &[]);
        assert_eq!(req_key(&out), Some((&b"GET"[..], &b"/a%20b"[..], &[b'q'; 40][..])));
        let mut credit_frame = Vec::new();
        credit(&mut credit_frame, 1, 2);
        assert_eq!(req_key(&credit_frame), None);
        assert_eq!(req_key(&out[..12]), None);
    }

    #[test]
    fn a_req_frame_gives_its_request_id_its_last_header() {
        let req = |headers: &[(&[u8], &[u8])]| req("POST", "/", b"/", b"", headers);
        let rid = crate::requestid::HEADER.as_bytes();
        assert_eq!(req_request_id(&req(&[(b"host", b"a"), (rid, b"abc123")])), Some(&b"abc123"[..]));
        assert_eq!(req_request_id(&req(&[(rid, b"abc"), (b"host", b"a")])), None); // not where the gateway puts it
        assert_eq!(req_request_id(&req(&[])), None);
        let mut credit_frame = Vec::new();
        credit(&mut credit_frame, 1, 2);
        assert_eq!(req_request_id(&credit_frame), None);
    }
}
