//! The WebSocket hand-off: a request head that asks `Upgrade: websocket` and routes to a
//! service is not served here. The connection stops reading, and the node gets the
//! client's socket (SCM_RIGHTS) in `dataplane.Upgrade` (tag 54) with every byte read from
//! the client and not consumed, starting at that head; the node's Python HTTP code takes
//! the connection over as if it had accepted it. Once sent, the gateway forgets the
//! connection: its copy of the fd is closed, the socket lives on in the node (no
//! shutdown). A message past the control socket's datagram size is refused 431 instead.
//!
//! Under TLS the session lives here, so the node cannot take the socket: `relay` gives it
//! one end of a socket pair instead and moves the bytes, decrypted, between the client
//! and the other end (the node's Python code sees a plain stream, with `scheme` "https").
//! A WebSocket over HTTP/2 is relayed the same way, from its stream (`h2ws.rs`).

use crate::control::MAX_MESSAGE;
use crate::frames::{w_array, w_bin, w_nil, w_str, w_uint};
use crate::http::ConnInfo;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Once one side of a relayed connection has closed, how long the other has to finish
/// (a WebSocket's closing handshake) before the relay lets both go.
const RELAY_LINGER: Duration = Duration::from_secs(5);

pub const UPGRADE: u64 = 54;

/// `dataplane.Upgrade(service, buffered, client, server, scheme, http_version)`.
pub fn message(info: &ConnInfo, service: &str, buffered: &[u8], http_version: &str) -> Vec<u8> {
    let mut o = Vec::with_capacity(64 + service.len() + buffered.len());
    w_array(&mut o, 7);
    w_uint(&mut o, UPGRADE);
    w_str(&mut o, service);
    w_bin(&mut o, buffered);
    w_array(&mut o, 2);
    w_str(&mut o, &info.client_ip);
    w_uint(&mut o, info.client_port as u64);
    if info.server_ip.is_empty() {
        w_nil(&mut o);
    } else {
        w_array(&mut o, 2);
        w_str(&mut o, &info.server_ip);
        w_uint(&mut o, info.server_port as u64);
    }
    w_str(&mut o, info.scheme);
    w_str(&mut o, http_version); // "2": `buffered` is the HTTP/1.1 head an h2 stream stands for (h2ws.rs)
    o
}

/// Whether a message of `buffered` bytes fits one control datagram.
pub fn fits(service: &str, buffered: usize) -> bool {
    buffered + service.len() + 128 <= MAX_MESSAGE
}

/// Sends `message` with `fd` to the node. The fd is closed here either way (sent: the
/// node holds the socket now; not sent: the node is gone, and so is the gateway soon).
pub fn send(control: i32, message: &[u8], fd: OwnedFd) -> bool {
    let iov = [std::io::IoSlice::new(message)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    loop {
        match sendmsg::<()>(control, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return true,
            Err(e) => {
                eprintln!("anycore-gateway: could not hand a WebSocket connection to the node: {e}");
                return false;
            }
        }
    }
}

/// The node's end of a socket pair relayed to `io` (a TLS stream) by a task of its own.
pub fn relay<S>(io: S) -> Option<OwnedFd>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().ok()?;
    ours.set_nonblocking(true).ok()?;
    let ours = tokio::net::UnixStream::from_std(ours).ok()?;
    tokio::spawn(pump(io, ours, Vec::new()));
    Some(theirs.into())
}

/// Moves bytes between the client's `io` and the node's end `ours` until both are done:
/// client to node and node to client (after `first`, node bytes read already), each
/// side's close passed on as a shutdown, the other side given `RELAY_LINGER` to finish.
pub async fn pump<S>(io: S, ours: tokio::net::UnixStream, first: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(io);
    let (mut node_rd, mut node_wr) = ours.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_rd, &mut node_wr).await;
        let _ = node_wr.shutdown().await;
    };
    let down = async {
        if first.is_empty() || client_wr.write_all(&first).await.is_ok() {
            let _ = tokio::io::copy(&mut node_rd, &mut client_wr).await;
        }
        let _ = client_wr.shutdown().await; // close_notify, or the h2 stream's end
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(RELAY_LINGER, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(RELAY_LINGER, up).await; }
    }
}
