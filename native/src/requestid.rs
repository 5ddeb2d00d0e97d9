//! Request ids and W3C trace context, as `gateway/requestid.py`: every request carries
//! exactly one `x-request-id` from the gateway on — the client's own when it is 1..200
//! bytes of visible ASCII, else one made here (never an invalid one echoed: the id goes
//! into response headers and log lines). The worker sees it in the Req frame's headers,
//! the client gets it back on every response of the request (the gateway's own answers
//! too). An invalid `traceparent` is dropped together with its `tracestate`.
//!
//! A made id is `<12 hex>-<counter in hex>`: the 12 hex digits are random per runtime
//! thread (std's OS-seeded hasher keys), the counter that thread's own, so making one is a
//! few stores: no system call, no atomic shared between threads.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

pub const MAX_LENGTH: usize = 200;
pub const HEADER: &str = "x-request-id";

/// The client's id if it may be used as it is.
pub fn accept(value: &[u8]) -> Option<&[u8]> {
    (!value.is_empty() && value.len() <= MAX_LENGTH && value.iter().all(|b| (0x21..0x7f).contains(b))).then_some(value)
}

/// A request's id: made here (inline), or the client's.
#[derive(Debug, Clone)]
pub enum Rid {
    Made([u8; 32], u8),
    Given(Vec<u8>),
}

impl Rid {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Rid::Made(b, n) => &b[..*n as usize],
            Rid::Given(v) => v,
        }
    }

    /// The client's valid id, else a new one.
    pub fn of(given: Option<&[u8]>) -> Rid {
        match given {
            Some(v) => Rid::Given(v.to_vec()),
            None => generate(),
        }
    }
}

thread_local! {
    static PREFIX: [u8; 12] = {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0);
        let bits = h.finish();
        let mut out = [0u8; 12];
        for (i, o) in out.iter_mut().enumerate() {
            *o = b"0123456789abcdef"[((bits >> (4 * i)) & 0xf) as usize];
        }
        out
    };
    static COUNTER: Cell<u64> = const { Cell::new(0) };
}

pub fn generate() -> Rid {
    let mut b = [0u8; 32];
    PREFIX.with(|p| b[..12].copy_from_slice(p));
    b[12] = b'-';
    let n = COUNTER.with(|c| {
        let n = c.get() + 1;
        c.set(n);
        n
    });
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut m = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(m & 0xf) as usize];
        m >>= 4;
        if m == 0 {
            break;
        }
    }
    let len = 13 + digits.len() - i;
    b[13..len].copy_from_slice(&digits[i..]);
    Rid::Made(b, len as u8)
}

/// W3C Trace Context level 1, loosely: `vv-<32 hex>-<16 hex>-ff[-...]`, version not
/// `ff`, version `00` with nothing after, neither id all zeros.
pub fn valid_traceparent(value: &[u8]) -> bool {
    let v = trim(value);
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
    if !(hex(&v[..2]) && hex(&v[3..35]) && hex(&v[36..52]) && hex(&v[53..55])) {
        return false;
    }
    let rest = &v[55..];
    if v[..2].eq_ignore_ascii_case(b"ff") || (&v[..2] == b"00" && !rest.is_empty()) || (!rest.is_empty() && rest[0] != b'-') {
        return false;
    }
    v[3..35].iter().any(|&b| b != b'0') && v[36..52].iter().any(|&b| b != b'0')
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_distinct_and_client_ids_are_checked() {
        let (a, b) = (generate(), generate());
        assert_ne!(a.as_bytes(), b.as_bytes());
        let s = std::str::from_utf8(a.as_bytes()).unwrap();
        assert!(s.len() >= 14 && s.as_bytes()[12] == b'-' && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'), "{s}");
        assert_eq!(accept(b"client-id-42"), Some(&b"client-id-42"[..]));
        for bad in [&b""[..], b"a b", b"\xc3\xa9", &[b'x'; 201][..]] {
            assert_eq!(accept(bad), None);
        }
    }

    #[test]
    fn traceparent_is_checked_as_w3c_level_1() {
        let good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(valid_traceparent(good));
        assert!(valid_traceparent(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more"));
        for bad in [
            &b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333z-01",
            b"garbage",
        ] {
            assert!(!valid_traceparent(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
