//! The answer's bytes: a response head (and a whole body) into the write buffer, the
//! chunks of a streamed body in the framing the client gets, and the gateway's own
//! refusals in the same form.

use super::{Conn, Exchange, Out, Upload};
use crate::access;
use crate::body::GwBody;
use crate::gateway::{self, Resp};
use crate::parse::Refusal;
use crate::requestid;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How a streamed body's chunks go out: as they are, chunk-encoded, or not at all
/// (HEAD, 204, 304).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing2 {
    Raw,
    Chunked,
    Skip,
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Writes the response head (and a whole body) into the write buffer.
    pub(super) fn begin(&mut self, resp: Resp, x: &mut Exchange, close: &mut bool) -> Out {
        let (parts, body) = resp.into_parts();
        let status = parts.status.as_u16();
        let bodiless = status < 200 || status == 204 || status == 304;
        let no_body = bodiless || x.head_method;
        if let Some(rec) = x.access.as_deref_mut() {
            rec.1 = access::Answer::of(self.gw, &parts);
            if let GwBody::Full(Some(b)) = &body {
                rec.1.bytes = if no_body { 0 } else { b.len() as u64 };
            }
        }
        let out = &mut self.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(parts.status.canonical_reason().unwrap_or("Unknown").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut has_length = false;
        for (name, value) in parts.headers.iter() {
            if name == ::http::header::CONNECTION {
                if value.as_bytes().eq_ignore_ascii_case(b"close") {
                    *close = true;
                    continue;
                }
            } else if name == ::http::header::TRANSFER_ENCODING {
                continue; // the gateway frames the body itself
            } else if name == ::http::header::CONTENT_LENGTH {
                has_length = true;
            } else if name.as_str() == requestid::HEADER {
                continue; // the request's own id goes out (the one the app was given)
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let framing = match &body {
            GwBody::Full(b) => {
                if !has_length && !bodiless {
                    out.extend_from_slice(b"content-length: ");
                    push_int(out, b.as_ref().map_or(0, |b| b.len()) as u64);
                    out.extend_from_slice(b"\r\n");
                }
                if !matches!(x.upload, Upload::Done) {
                    *close = true; // the rest of the request body will not be read
                }
                Framing2::Raw
            }
            GwBody::Stream(_) if no_body => Framing2::Skip,
            GwBody::Stream(_) if has_length => Framing2::Raw,
            GwBody::Stream(_) if !x.http10 => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing2::Chunked
            }
            GwBody::Stream(_) => {
                *close = true; // HTTP/1.0: the body ends with the connection
                Framing2::Raw
            }
        };
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(x.rid.as_bytes());
        out.extend_from_slice(b"\r\n");
        if *close || !x.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if x.http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        match body {
            GwBody::Full(b) => {
                if let Some(b) = b.filter(|_| !no_body) {
                    out.extend_from_slice(&b);
                }
                Out::Done
            }
            stream => Out::Streaming(stream, if no_body { Framing2::Skip } else { framing }),
        }
    }

    pub(super) fn chunk(&mut self, data: &[u8], framing: Framing2) {
        match framing {
            Framing2::Skip => {}
            Framing2::Raw => self.out.extend_from_slice(data),
            Framing2::Chunked => {
                if data.is_empty() {
                    return;
                }
                let _ = std::io::Write::write_fmt(&mut self.out, format_args!("{:x}\r\n", data.len()));
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }

    pub(super) fn write_refusal(&mut self, refusal: &Refusal) {
        self.gw.refused(refusal.status);
        let resp = gateway::made(&self.gw.node_hv, None, refusal.status, refusal.error(), &refusal.detail, None);
        let mut x = Exchange {
            submitted: None,
            svc: None,
            id: 0,
            upload: Upload::Done,
            head_method: false,
            http10: false,
            keep_alive: false,
            expect_continue: false,
            body_timeout: Duration::ZERO,
            rid: requestid::generate(),
            access: None,
        };
        let mut close = true;
        self.begin(resp, &mut x, &mut close);
    }
}

/// A streamed chunk's body bytes, for the access log's `bytes`.
pub(super) fn sent(x: &mut Exchange, data: &[u8], framing: Framing2) {
    if let (Some(rec), false) = (x.access.as_deref_mut(), matches!(framing, Framing2::Skip)) {
        rec.1.bytes += data.len() as u64;
    }
}

fn push_int(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
