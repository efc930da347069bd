//! Negotiating a shared-memory link over a Unix socket (blocking; run off the async runtime).
//!
//! Dialer → acceptor: `Offer` (JSON, length-prefixed) with the segment's file descriptor
//! attached. Acceptor → dialer: `Reply`. Dialer → acceptor: one confirmation byte. Both sides
//! first check that the peer process runs as the same user.

use super::ring::Segment;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest a handshake may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest handshake message.
const MAX_MESSAGE: usize = 16 << 10;
const CONFIRM: u8 = 1;

/// What the dialer proposes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Offer {
    pub(super) node_id: String,
    pub(super) namespace: String,
    /// The acceptor's token, learned from its INFO over an authenticated link.
    pub(super) token: String,
    /// Also written into the segment: the acceptor must find it there.
    pub(super) challenge: u64,
}

/// What the acceptor requires.
#[derive(Debug, Clone)]
pub(super) struct Expect {
    pub(super) namespace: String,
    pub(super) token: String,
    pub(super) node_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    node_id: String,
    reason: Option<String>,
}

type Outcome<T> = std::result::Result<T, String>;

/// Dials `path`, offers a new segment and waits until the acceptor proved it mapped it.
pub(super) fn dial(
    path: &Path,
    offer: &Offer,
    capacity: usize,
    expected_peer: &str,
) -> Outcome<(UnixStream, Segment)> {
    let mut stream =
        UnixStream::connect(path).map_err(|e| format!("cannot reach {}: {e}", path.display()))?;
    set_timeouts(&stream, Some(TIMEOUT))?;
    same_user(&stream)?;
    let (segment, file) = Segment::create(capacity, offer.challenge).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(offer).map_err(|e| e.to_string())?;
    send_with_fd(&stream, &body, &file)?;
    let reply: Reply = read_message(&mut stream)?;
    if !reply.ok {
        return Err(format!(
            "refused: {}",
            reply.reason.unwrap_or_else(|| "no reason".into())
        ));
    }
    if reply.node_id != expected_peer {
        return Err(format!(
            "expected node '{expected_peer}', found '{}'",
            reply.node_id
        ));
    }
    if !segment.responded() {
        return Err("the peer did not answer the challenge in the segment".into());
    }
    stream.write_all(&[CONFIRM]).map_err(|e| e.to_string())?;
    set_timeouts(&stream, None)?;
    Ok((stream, segment))
}

/// Checks an offer, maps its segment, answers the challenge; returns the peer's node id.
pub(super) fn accept(
    mut stream: UnixStream,
    expect: &Expect,
) -> Outcome<(UnixStream, Segment, String)> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    set_timeouts(&stream, Some(TIMEOUT))?;
    same_user(&stream)?;
    let (body, file) = recv_with_fd(&stream)?;
    let offer: Offer = serde_json::from_slice(&body).map_err(|e| format!("bad offer: {e}"))?;
    let checked = check(&offer, expect).and_then(|()| {
        let segment = Segment::open(&file).map_err(|e| e.to_string())?;
        if segment.challenge() != offer.challenge {
            return Err("the challenge in the segment does not match the offer".to_owned());
        }
        segment.respond();
        Ok(segment)
    });
    let reply = Reply {
        ok: checked.is_ok(),
        node_id: expect.node_id.clone(),
        reason: checked.as_ref().err().cloned(),
    };
    write_message(&mut stream, &reply)?;
    let segment = checked?;
    let mut confirm = [0u8; 1];
    stream
        .read_exact(&mut confirm)
        .map_err(|e| format!("no confirmation: {e}"))?;
    if confirm[0] != CONFIRM {
        return Err("bad confirmation byte".into());
    }
    set_timeouts(&stream, None)?;
    Ok((stream, segment, offer.node_id))
}

fn check(offer: &Offer, expect: &Expect) -> Outcome<()> {
    if offer.namespace != expect.namespace {
        return Err(format!("namespace '{}' is not ours", offer.namespace));
    }
    if offer.token != expect.token {
        return Err("wrong token".into());
    }
    if offer.node_id == expect.node_id || offer.node_id.is_empty() {
        return Err(format!("bad node id '{}'", offer.node_id));
    }
    Ok(())
}

fn set_timeouts(stream: &UnixStream, timeout: Option<Duration>) -> Outcome<()> {
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| e.to_string())
}

/// The peer process must run as our user.
fn same_user(stream: &UnixStream) -> Outcome<()> {
    let peer = rustix::net::sockopt::socket_peercred(stream).map_err(|e| e.to_string())?;
    let ours = rustix::process::getuid();
    if peer.uid != ours {
        return Err(format!(
            "peer runs as uid {}, not {}",
            peer.uid.as_raw(),
            ours.as_raw()
        ));
    }
    Ok(())
}

fn framed(body: &[u8]) -> Outcome<Vec<u8>> {
    if body.len() > MAX_MESSAGE {
        return Err("handshake message too large".into());
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    Ok(out)
}

fn send_with_fd(stream: &UnixStream, body: &[u8], file: &File) -> Outcome<()> {
    let message = framed(body)?;
    let fds = [file.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("cannot attach the segment".into());
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&message)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| e.to_string())?;
    let mut stream = stream;
    stream
        .write_all(&message[sent..])
        .map_err(|e| e.to_string())
}

fn recv_with_fd(stream: &UnixStream) -> Outcome<(Vec<u8>, File)> {
    let mut buf = vec![0u8; 4 + MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| e.to_string())?;
    let mut file = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                file.get_or_insert(File::from(fd));
            }
        }
    }
    let file = file.ok_or("no segment attached")?;
    let mut have = received.bytes;
    if have == 0 {
        return Err("the peer closed the socket".into());
    }
    let mut stream = stream;
    while have < 4 {
        have += read_some(&mut stream, &mut buf[have..])?;
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_MESSAGE {
        return Err("handshake message too large".into());
    }
    while have < 4 + len {
        have += read_some(&mut stream, &mut buf[have..4 + len])?;
    }
    Ok((buf[4..4 + len].to_vec(), file))
}

fn read_some(stream: &mut &UnixStream, buf: &mut [u8]) -> Outcome<usize> {
    match stream.read(buf) {
        Ok(0) => Err("the peer closed the socket".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn write_message<T: Serialize>(stream: &mut UnixStream, message: &T) -> Outcome<()> {
    let body = serde_json::to_vec(message).map_err(|e| e.to_string())?;
    stream.write_all(&framed(&body)?).map_err(|e| e.to_string())
}

fn read_message<T: for<'de> Deserialize<'de>>(stream: &mut UnixStream) -> Outcome<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err("handshake message too large".into());
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("bad reply: {e}"))
}
