//! HTTP/1.1 request heads and chunked bodies, parsed strictly and without I/O: bytes in,
//! a `Head` (borrowing the connection's read buffer) or a `Refusal` out. `h1/` drives
//! it; the unit tests below run it in memory.
//!
//! The rules are the Python gateway's (`gateway/http.py`, `gateway/chunked.py`): what two
//! components could read differently is malformed here, so it is refused with 400 before
//! it reaches a worker. httparse checks the grammar (methods and header names are tokens,
//! no NUL or other control bytes in values, versions 1.0 and 1.1 only, no obs-fold, no
//! space before a colon); on top of it:
//! - every line ends in CRLF (a bare LF is refused: `find_end`);
//! - at most one Host, Content-Length, Content-Type and Transfer-Encoding; a
//!   Transfer-Encoding other than one `chunked`, or with Content-Length, or in HTTP/1.0;
//!   a Content-Length that is not digits; no Host in HTTP/1.1; a header name with `_`
//!   (it collides with `-` in a WSGI environ); `*` as the target of anything but OPTIONS;
//! - request line and headers over `header_limit` -> 431 (counted as the Python gateway
//!   counts: target + each name and value + 4), a target over `MAX_TARGET` -> 414;
//! - a chunked body: `Chunked`, whose rules open its own section below.

use std::fmt;

/// A request target (path + query) longer than this is answered 414 (the Python
/// gateway's `Limits.max_target`).
pub const MAX_TARGET: usize = 8 * 1024;
/// Header slots tried first; a head with more is parsed again with room for all.
pub const HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub detail: String,
}

impl Refusal {
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Refusal { status, detail: detail.into() }
    }
    pub fn error(&self) -> &'static str {
        match self.status {
            408 => "request timeout",
            414 => "uri too long",
            431 => "request header fields too large",
            501 => "not implemented",
            _ => "bad request",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.detail)
    }
}

fn bad(detail: impl Into<String>) -> Refusal {
    Refusal::new(400, detail)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    No,
    WebSocket,
    /// Another protocol (h2c...): answered as plain HTTP, then the connection closes.
    Other,
}

#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub method: &'b str,
    pub target: &'b str,
    pub http10: bool,
    pub headers: &'h [httparse::Header<'b>],
    pub host: &'b [u8],
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub upgrade: Upgrade,
    /// The client's first valid `x-request-id` (`requestid::accept`).
    pub request_id: Option<&'b [u8]>,
    /// An invalid `traceparent` came: it and `tracestate` are not passed on.
    pub bad_trace: bool,
}

impl Head<'_, '_> {
    /// (raw path, query) of the target: origin-form as is, absolute-form without its
    /// scheme and authority, `*` as `*`.
    pub fn path_query(&self) -> (&str, &str) {
        let mut t = self.target;
        if !t.starts_with('/') && t != "*" {
            if let Some(i) = t.find("://") {
                let rest = &t[i + 3..];
                t = rest.find(['/', '?']).map_or("", |j| &rest[j..]);
            }
        }
        let (p, q) = t.split_once('?').unwrap_or((t, ""));
        (if p.is_empty() { "/" } else { p }, q)
    }
    /// The authority of an absolute-form target, if any.
    pub fn authority(&self) -> Option<&str> {
        let i = self.target.find("://")?;
        let rest = &self.target[i + 3..];
        Some(rest.split(['/', '?']).next().unwrap_or(""))
    }
}

/// Finds the end of the head (just past its CRLFCRLF) in `buf`, scanning from `*scanned`
/// (what earlier calls saw, so a head that comes in pieces is scanned once). A bare LF
/// anywhere in the head is refused.
pub fn find_end(buf: &[u8], scanned: &mut usize) -> Result<Option<usize>, Refusal> {
    let mut i = *scanned;
    while let Some(at) = buf[i..].iter().position(|&b| b == b'\n') {
        let n = i + at;
        if n == 0 || buf[n - 1] != b'\r' {
            return Err(bad("malformed request: a line ends in a bare LF; HTTP/1.1 lines end in CRLF"));
        }
        if n >= 3 && &buf[n - 3..n - 1] == b"\r\n" {
            *scanned = n + 1;
            return Ok(Some(n + 1));
        }
        i = n + 1;
    }
    *scanned = i; // the next call goes on after the last LF (a CRLFCRLF may straddle reads)
    Ok(None)
}

/// An incomplete head that is already past a limit: 414 when the target is, 431 when
/// the bytes are.
pub fn too_long(buf: &[u8], header_limit: usize) -> Option<Refusal> {
    if buf.len() > MAX_TARGET {
        let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
        let mut parts = line.splitn(3, |&b| b == b' ');
        parts.next();
        if let Some(target) = parts.next() {
            if target.len() > MAX_TARGET {
                return Some(Refusal::new(414, format!("request target exceeds {MAX_TARGET} bytes")));
            }
        }
    }
    let cap = if header_limit == 0 { 1 << 20 } else { header_limit + 1024 };
    (buf.len() > cap).then(|| too_large(header_limit))
}

fn too_large(limit: usize) -> Refusal {
    Refusal::new(431, format!("request line and headers exceed {limit} bytes"))
}

pub enum Parsed<'h, 'b> {
    Head(Head<'h, 'b>),
    /// More headers than `storage` holds: parse again with `n` slots.
    TooManyHeaders(usize),
}

/// Parses and checks a complete head (`head` ends with its CRLFCRLF).
pub fn parse_head<'h, 'b>(head: &'b [u8], storage: &'h mut [httparse::Header<'b>], header_limit: usize) -> Result<Parsed<'h, 'b>, Refusal> {
    let mut req = httparse::Request::new(storage);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("malformed request: incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Ok(Parsed::TooManyHeaders(head.iter().filter(|&&b| b == b'\n').count())),
        Err(httparse::Error::Version) => return Err(bad("malformed request: only HTTP/1.0 and HTTP/1.1 are served here; use HTTP/1.1")),
        Err(e) => return Err(bad(format!("malformed request: {e}"))),
    }
    let method = req.method.unwrap_or("");
    if !method.bytes().all(is_token) {
        return Err(bad(format!("malformed request: the method {:?} is not a token", lossy(method.as_bytes()))));
    }
    let target = req.path.unwrap_or("");
    let http10 = req.version == Some(0);
    let headers: &'h [httparse::Header<'b>] = req.headers;
    if target.len() > MAX_TARGET {
        return Err(Refusal::new(414, format!("request target exceeds {MAX_TARGET} bytes")));
    }
    let mut size = target.len();
    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut content_type = false;
    let mut expect_continue = false;
    let mut upgrade: Option<&[u8]> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    let mut request_id = None;
    let mut bad_trace = false;
    for h in headers {
        let name = h.name;
        let value = h.value;
        size += name.len() + value.len() + 4;
        if name.as_bytes().contains(&b'_') {
            return Err(bad(format!("header name {name:?} contains '_': it would collide with the '-' spelling in a WSGI environ; use '-'")));
        }
        let is = |n: &str| name.len() == n.len() && name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is("host") => {
                if host.is_some() {
                    return Err(bad("more than one Host header"));
                }
                host = Some(value);
            }
            14 if is("content-length") => {
                if length.is_some() {
                    return Err(bad("more than one Content-Length header"));
                }
                if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                    return Err(bad(format!("Content-Length {:?} is not a number of bytes", String::from_utf8_lossy(&value[..value.len().min(40)]))));
                }
                length = Some(value.iter().fold(0u64, |n, d| n * 10 + (d - b'0') as u64));
            }
            17 if is("transfer-encoding") => {
                if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(bad(format!(
                        "unsupported Transfer-Encoding {:?}: only a single 'chunked' is accepted",
                        String::from_utf8_lossy(&value[..value.len().min(40)])
                    )));
                }
                chunked = true;
            }
            12 if is("content-type") => {
                if content_type {
                    return Err(bad("more than one Content-Type header"));
                }
                content_type = true;
            }
            6 if is("expect") => expect_continue = value.eq_ignore_ascii_case(b"100-continue"),
            12 if is("x-request-id") && request_id.is_none() => request_id = crate::requestid::accept(value),
            11 if is("traceparent") => bad_trace |= !crate::requestid::valid_traceparent(value),
            7 if is("upgrade") => upgrade = Some(value),
            10 if is("connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = trim(token);
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                    upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
                }
            }
            _ => {}
        }
    }
    if header_limit > 0 && size > header_limit {
        return Err(too_large(header_limit));
    }
    if host.is_none() && !http10 {
        return Err(bad("an HTTP/1.1 request needs a Host header"));
    }
    if chunked && http10 {
        return Err(bad("Transfer-Encoding is not allowed in HTTP/1.0"));
    }
    if chunked && length.is_some() {
        return Err(bad("Transfer-Encoding and Content-Length together: the body's end would be ambiguous"));
    }
    if target == "*" && method != "OPTIONS" {
        return Err(bad("the asterisk-form target '*' is only for OPTIONS"));
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) if n > 0 => Framing::Length(n),
        _ => Framing::Empty,
    };
    let upgrade = match upgrade {
        Some(v) if upgrade_token && v.eq_ignore_ascii_case(b"websocket") => Upgrade::WebSocket,
        Some(_) if upgrade_token => Upgrade::Other,
        _ => Upgrade::No,
    };
    let keep_alive = if http10 { keep_alive_token && !close } else { !close };
    Ok(Parsed::Head(Head {
        method,
        target,
        http10,
        headers,
        host: host.unwrap_or(b""),
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        request_id,
        bad_trace,
    }))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| *c != b' ' && *c != b'\t').unwrap_or(b.len());
    let end = b.iter().rposition(|c| *c != b' ' && *c != b'\t').map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

// -- chunked bodies -------------------------------------------------------------------------
//
// RFC 9112 §7.1, as `gateway/chunked.py`: a chunk-size line is
// `1*16HEXDIG *(BWS ";" BWS token [BWS "=" BWS (token | quoted-string)])` CRLF (no
// whitespace after the size unless an extension follows); chunk data is followed by CRLF
// exactly; trailer fields are checked like header fields and dropped, and one that frames
// or routes the request is refused; every byte of extensions and trailers counts against
// `max_meta` (the header limit), and no line may be longer. `feed` consumes nothing past
// the end of the body: what follows is the next pipelined request.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data,
    DataEnd,
    Trailer,
    Done,
}

#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    left: u64,
    line: Vec<u8>,
    meta: usize,
    max_meta: usize,
}

const FORBIDDEN_TRAILERS: [&str; 9] =
    ["host", "content-length", "transfer-encoding", "connection", "expect", "te", "trailer", "upgrade", "keep-alive"];

impl Chunked {
    pub fn new(max_meta: usize) -> Self {
        Chunked { state: State::Size, left: 0, line: Vec::new(), meta: 0, max_meta: if max_meta == 0 { 64 * 1024 } else { max_meta } }
    }

    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, handing each piece of body data to `data`; returns how many
    /// bytes of `input` it consumed (all of them, unless the body ended inside).
    pub fn feed<'a>(&mut self, input: &'a [u8], data: &mut dyn FnMut(&'a [u8])) -> Result<usize, Refusal> {
        let mut pos = 0;
        while pos < input.len() && self.state != State::Done {
            match self.state {
                State::Data => {
                    let take = (self.left.min((input.len() - pos) as u64)) as usize;
                    data(&input[pos..pos + take]);
                    pos += take;
                    self.left -= take as u64;
                    if self.left == 0 {
                        self.state = State::DataEnd;
                        self.left = 2;
                    }
                }
                State::DataEnd => {
                    let expected = if self.left == 2 { b'\r' } else { b'\n' };
                    if input[pos] != expected {
                        return Err(chunk_error("chunk data is not followed by CRLF"));
                    }
                    pos += 1;
                    self.left -= 1;
                    if self.left == 0 {
                        self.state = State::Size;
                    }
                }
                State::Size | State::Trailer => {
                    let newline = input[pos..].iter().position(|&b| b == b'\n');
                    let stop = newline.map_or(input.len(), |n| pos + n + 1);
                    if self.line.len() + stop - pos > self.max_meta {
                        return Err(chunk_error(&format!("a chunk line exceeds {} bytes", self.max_meta)));
                    }
                    if newline.is_none() {
                        self.line.extend_from_slice(&input[pos..stop]);
                        pos = stop;
                        continue;
                    }
                    let result = if self.line.is_empty() {
                        self.line_done(&input[pos..stop])
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(&input[pos..stop]);
                        let r = self.line_done(&line);
                        line.clear();
                        self.line = line;
                        r
                    };
                    result?;
                    pos = stop;
                }
                State::Done => break,
            }
        }
        Ok(pos)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), Refusal> {
        let Some(line) = line.strip_suffix(b"\r\n") else {
            return Err(chunk_error("a chunk line does not end with CRLF"));
        };
        if self.state == State::Size {
            let (size, ext) = size_line(line).ok_or_else(|| chunk_error(&format!("bad chunk size line {:?}", lossy(line))))?;
            self.count(ext)?;
            if size > 0 {
                self.state = State::Data;
                self.left = size;
            } else {
                self.state = State::Trailer;
            }
        } else if line.is_empty() {
            self.state = State::Done;
        } else {
            self.count(line.len() + 2)?;
            let name = trailer_name(line).ok_or_else(|| chunk_error(&format!("bad trailer field {:?}", lossy(line))))?;
            if name.contains(&b'_') || FORBIDDEN_TRAILERS.iter().any(|f| f.as_bytes().eq_ignore_ascii_case(name)) {
                return Err(chunk_error(&format!("trailer field {:?} is not allowed", lossy(name))));
            }
        }
        Ok(())
    }

    fn count(&mut self, n: usize) -> Result<(), Refusal> {
        self.meta += n;
        if self.meta > self.max_meta {
            return Err(chunk_error(&format!("chunk extensions and trailers exceed {} bytes", self.max_meta)));
        }
        Ok(())
    }
}

fn chunk_error(what: &str) -> Refusal {
    bad(format!("malformed chunked body: {what}"))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned()
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// (size, bytes of extensions) of a chunk-size line without its CRLF.
fn size_line(line: &[u8]) -> Option<(u64, usize)> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let size = line[..digits].iter().fold(0u64, |n, d| (n << 4) | (*d as char).to_digit(16).unwrap_or(0) as u64);
    let mut i = digits;
    let skip_ws = |i: &mut usize| {
        while *i < line.len() && is_ws(line[*i]) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < line.len() && is_token(line[*i]) {
            *i += 1;
        }
        *i > start
    };
    while i < line.len() {
        skip_ws(&mut i);
        if i >= line.len() || line[i] != b';' {
            return None;
        }
        i += 1;
        skip_ws(&mut i);
        if !token(&mut i) {
            return None;
        }
        let after_name = i;
        skip_ws(&mut i);
        if i < line.len() && line[i] == b'=' {
            i += 1;
            skip_ws(&mut i);
            if i < line.len() && line[i] == b'"' {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return None,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let next = *line.get(i + 1)?;
                            if !(next == b'\t' || (0x20..0x7f).contains(&next) || next >= 0x80) {
                                return None;
                            }
                            i += 2;
                        }
                        Some(&c) => {
                            if !(c == b'\t' || c == b' ' || c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c) || c >= 0x80) {
                                return None;
                            }
                            i += 1;
                        }
                    }
                }
            } else if !token(&mut i) {
                return None;
            }
        } else {
            i = after_name; // whitespace is allowed only before a ';' or '='
        }
    }
    Some((size, line.len() - digits))
}

/// The name of a trailer field `token ":" OWS value OWS`, if the line is one.
fn trailer_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
        return None;
    }
    if !line[colon + 1..].iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80) {
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<(String, bool, Framing, bool, Upgrade), Refusal> {
        let mut scanned = 0;
        let end = find_end(raw, &mut scanned)?.expect("complete");
        let mut storage = [httparse::EMPTY_HEADER; HEADERS];
        match parse_head(&raw[..end], &mut storage, 1000)? {
            Parsed::Head(h) => Ok((h.target.to_string(), h.http10, h.framing, h.keep_alive, h.upgrade)),
            Parsed::TooManyHeaders(_) => panic!("too many"),
        }
    }

    fn status(raw: &[u8]) -> u16 {
        head(raw).map_or_else(|r| r.status, |_| 200)
    }

    #[test]
    fn a_plain_head_parses_with_its_framing_and_keep_alive() {
        assert_eq!(head(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(), ("/a?b".into(), false, Framing::Empty, true, Upgrade::No));
        let post = head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!((post.2, post.3), (Framing::Length(12), false));
        assert_eq!(head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().2, Framing::Chunked);
        let old = head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((old.1, old.3), (true, false));
        assert!(head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().3);
        let ws = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        assert_eq!(head(ws).unwrap().4, Upgrade::WebSocket);
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n").unwrap().4, Upgrade::Other);
    }

    #[test]
    fn what_two_parsers_could_read_differently_is_refused_400() {
        for raw in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: a/b\r\nContent-Type: c/d\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
        ] {
            assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(status(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    }

    #[test]
    fn limits_give_414_and_431_complete_or_not() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX_TARGET));
        assert_eq!(status(long.as_bytes()), 414);
        assert_eq!(too_long(&long.as_bytes()[..MAX_TARGET + 10], 1 << 20).unwrap().status, 414);
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(990));
        assert_eq!(status(big.as_bytes()), 431); // limit 1000 in `head`
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "b".repeat(3000));
        assert_eq!(too_long(partial.as_bytes(), 1000).unwrap().status, 431);
        assert!(too_long(b"GET / HTTP/1.1\r\nX: y", 1000).is_none());
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
        let mut scanned = 0;
        for cut in [3, 17, 25, 26] {
            assert_eq!(find_end(&raw[..cut], &mut scanned).unwrap(), None, "cut {cut}");
        }
        assert_eq!(find_end(&raw[..], &mut scanned).unwrap(), Some(raw.len() - 4));
        let mut scanned = 0;
        assert!(find_end(b"GET / HTTP/1.1\r\nHost: a\n", &mut scanned).is_err());
    }

    #[test]
    fn too_many_headers_asks_for_more_room() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..HEADERS + 5 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut storage = [httparse::EMPTY_HEADER; HEADERS];
        let Ok(Parsed::TooManyHeaders(n)) = parse_head(&raw, &mut storage, 0) else { panic!("expected TooManyHeaders") };
        let mut more = vec![httparse::EMPTY_HEADER; n];
        let Ok(Parsed::Head(h)) = parse_head(&raw, &mut more, 0) else { panic!("expected a head") };
        assert_eq!(h.headers.len(), HEADERS + 6);
    }

    #[test]
    fn absolute_form_gives_its_path_query_and_authority() {
        let raw = b"GET http://a:8/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; HEADERS];
        let Ok(Parsed::Head(h)) = parse_head(raw, &mut storage, 0) else { panic!() };
        assert_eq!((h.path_query(), h.authority()), (("/x", "y=1"), Some("a:8")));
    }

    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), Refusal> {
        let mut dec = Chunked::new(1000);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() && !dec.done() {
            let end = (pos + step).min(input.len());
            pos += dec.feed(&input[pos..end], &mut |d| out.extend_from_slice(d))?;
        }
        assert!(dec.done(), "not done: {:?}", String::from_utf8_lossy(input));
        Ok((out, pos))
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces_and_stop_at_their_end() {
        let body = b"5\r\nhello\r\n6;a=b ; c = \"q \\\" x\"\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\nGET";
        for step in [1, 2, 3, 7, 100] {
            let (out, used) = decode(body, step).unwrap();
            assert_eq!((&out[..], used), (&b"hello world0123456789"[..], body.len() - 3));
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5;=x\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0 \r\n\r\n",
            b"5;a \r\nhello\r\n0\r\n\r\n",
            b"0\r\nContent-Length: 5\r\n\r\n",
            b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n",
            b"0\r\nX_Y: 1\r\n\r\n",
        ] {
            let mut dec = Chunked::new(1000);
            let r = dec.feed(bad, &mut |_| {});
            assert_eq!(r.map_err(|e| e.status), Err(400), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut dec = Chunked::new(10);
        assert!(dec.feed(b"1;aaaaaaaaaaaaaaaaa\r\n", &mut |_| {}).is_err()); // a line past max_meta
        let mut dec = Chunked::new(100);
        assert!(dec.feed(b"ffffffffffffffff\r\n", &mut |_| {}).is_ok()); // 16 digits is the most
    }
}
