//! The WebSocket hand-off: a request head that asks `Upgrade: websocket` and routes to a
//! service is not served here. The connection stops reading, and the node gets the
//! client's socket (SCM_RIGHTS) in `dataplane.Upgrade` (tag 54) with every byte read from
//! the client and not consumed, starting at that head; the node's Python HTTP code takes
//! the connection over as if it had accepted it. Once sent, the gateway forgets the
//! connection: its copy of the fd is closed, the socket lives on in the node (no
//! shutdown). A message past the control socket's datagram size is refused 431 instead.

use crate::control::MAX_MESSAGE;
use crate::frames::{w_array, w_bin, w_nil, w_str, w_uint};
use crate::http::ConnInfo;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::os::unix::io::{AsRawFd, OwnedFd};

pub const UPGRADE: u64 = 54;

/// `dataplane.Upgrade(service, buffered, client, server)`.
pub fn message(info: &ConnInfo, service: &str, buffered: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(64 + service.len() + buffered.len());
    w_array(&mut o, 5);
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
