//! Framing: how a [`Packet`] becomes bytes on a link and back.
//!
//! A frame is
//!
//! ```text
//! +----------------+---------+------+------------------------------------+
//! | length: u32 BE | version | kind | body                               |
//! +----------------+---------+------+------------------------------------+
//!                  |<------------------ length bytes ------------------->|
//! ```
//!
//! Every length is checked against [`Codec::max_frame_len`] *before* any buffer grows, so a hostile
//! peer cannot make a node allocate more than the limit. The hot packets (REQUEST, RESPONSE) have a
//! compact binary body (see `compact.rs`); the others are `[sender, {..}]` as MessagePack with
//! named fields: unknown fields are ignored, missing optional fields take their defaults. An
//! unknown version or kind is a clear [`FrameError`], never a panic.
//!
//! ```
//! use bytes::BytesMut;
//! use phalanx::protocol::codec::{Codec, FrameDecoder};
//! use phalanx::protocol::packet::{Disconnect, Packet, PacketBody};
//!
//! let codec = Codec::default();
//! let frame = codec.encode(&Packet::new("a", PacketBody::Disconnect(Disconnect {}))).unwrap();
//!
//! let mut decoder = FrameDecoder::new(codec);
//! let mut buf = BytesMut::from(&frame[..]);
//! let packet = decoder.decode(&mut buf).unwrap().expect("one whole frame");
//! assert_eq!(&*packet.sender, "a");
//! ```

use crate::error::Error;
use crate::protocol::compact;
use crate::protocol::packet::{PROTOCOL_VERSION, Packet, PacketBody, PacketKind};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Bytes before the body: length (4), version (1), kind (1).
pub const HEADER_LEN: usize = 6;

/// Default largest frame accepted: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The most a [`FrameDecoder`] reserves ahead of the bytes it has for a frame still arriving.
pub const RESERVE_AHEAD: usize = 64 * 1024;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared length is above the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The declared length cannot even hold version and kind.
    #[error("frame of {0} bytes is shorter than its header")]
    TooShort(usize),
    /// A protocol version this node does not speak.
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// A packet kind this version does not know.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// The body is not valid MessagePack for the kind.
    #[error("malformed {kind:?} body: {reason}")]
    Malformed {
        /// The kind the header announced.
        kind: PacketKind,
        /// What the decoder reported.
        reason: String,
    },
    /// A packet could not be encoded (e.g. it is larger than the maximum).
    #[error("cannot encode packet: {0}")]
    Encode(String),
}

impl From<FrameError> for Error {
    fn from(err: FrameError) -> Self {
        Error::protocol(err.to_string())
    }
}

/// Encodes and decodes frames under one size limit.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    max_frame_len: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Codec {
    /// A codec accepting frames of at most `max_frame_len` bytes (header excluded).
    ///
    /// ```
    /// let codec = phalanx::protocol::codec::Codec::new(1024);
    /// assert_eq!(codec.max_frame_len(), 1024);
    /// ```
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            max_frame_len: max_frame_len.max(2),
        }
    }

    /// The largest accepted frame length.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Encodes `packet` as one whole frame, length prefix included.
    pub fn encode(&self, packet: &Packet) -> Result<Bytes, FrameError> {
        // Room for the envelope and the payload it carries, carved from the thread's arena.
        crate::arena::build(256 + packet.payload_len(), |buf| {
            self.encode_into(packet, buf)
        })
    }

    /// Appends one frame for `packet` to `buf`.
    pub fn encode_into(&self, packet: &Packet, buf: &mut BytesMut) -> Result<(), FrameError> {
        let start = buf.len();
        buf.put_u32(0);
        buf.put_u8(PROTOCOL_VERSION);
        buf.put_u8(packet.kind() as u8);
        let sender: &str = &packet.sender;
        let result = match &packet.body {
            PacketBody::Discover(b) => write_body(buf, sender, b),
            PacketBody::Info(b) => write_body(buf, sender, b),
            PacketBody::Heartbeat(b) => write_body(buf, sender, b),
            PacketBody::Request(b) => {
                compact::write_request(buf, sender, b).map_err(FrameError::Encode)
            }
            PacketBody::Response(b) => {
                compact::write_response(buf, sender, b).map_err(FrameError::Encode)
            }
            PacketBody::Event(b) => write_body(buf, sender, b),
            PacketBody::StreamChunk(b) => {
                compact::write_chunk(buf, sender, b).map_err(FrameError::Encode)
            }
            PacketBody::StreamEnd(b) => write_body(buf, sender, b),
            PacketBody::StreamError(b) => write_body(buf, sender, b),
            PacketBody::StreamCredit(b) => write_body(buf, sender, b),
            PacketBody::Ping(b) => write_body(buf, sender, b),
            PacketBody::Pong(b) => write_body(buf, sender, b),
            PacketBody::Disconnect(b) => write_body(buf, sender, b),
        };
        if let Err(err) = result {
            buf.truncate(start);
            return Err(err);
        }
        let len = buf.len() - start - 4;
        if len > self.max_frame_len {
            buf.truncate(start);
            return Err(FrameError::Encode(format!(
                "frame of {len} bytes exceeds the maximum of {}",
                self.max_frame_len
            )));
        }
        buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Checks a declared frame length before anything is allocated for it.
    pub fn check_len(&self, len: usize) -> Result<(), FrameError> {
        if len > self.max_frame_len {
            Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            })
        } else if len < 2 {
            Err(FrameError::TooShort(len))
        } else {
            Ok(())
        }
    }

    /// Decodes one whole frame, length prefix included.
    pub fn decode_frame(&self, frame: &[u8]) -> Result<Packet, FrameError> {
        self.decode_whole(Bytes::copy_from_slice(frame))
    }

    /// Decodes one whole frame, length prefix included, that arrived as [`Bytes`] (a NATS
    /// message, an in-process frame): a call's params or result stay a slice of it.
    pub fn decode_whole(&self, frame: Bytes) -> Result<Packet, FrameError> {
        if frame.len() < HEADER_LEN {
            return Err(FrameError::TooShort(frame.len()));
        }
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        self.check_len(len)?;
        if len != frame.len() - 4 {
            return Err(FrameError::Encode(format!(
                "frame declares {len} bytes but carries {}",
                frame.len() - 4
            )));
        }
        self.decode_bytes(frame.slice(4..))
    }

    /// Decodes version, kind and body (a frame without its length prefix).
    pub fn decode_payload(&self, payload: &[u8]) -> Result<Packet, FrameError> {
        self.decode_bytes(Bytes::copy_from_slice(payload))
    }

    /// Like [`Codec::decode_payload`], keeping the params or result of a call as a slice of
    /// `payload` instead of copying them.
    pub fn decode_bytes(&self, payload: Bytes) -> Result<Packet, FrameError> {
        self.check_len(payload.len())?;
        let version = payload[0];
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = PacketKind::from_byte(payload[1]).ok_or(FrameError::UnknownKind(payload[1]))?;
        let body = &payload[2..];
        let (sender, body) = match kind {
            PacketKind::Discover => read_body(kind, body, PacketBody::Discover),
            PacketKind::Info => read_body(kind, body, PacketBody::Info),
            PacketKind::Heartbeat => read_body(kind, body, PacketBody::Heartbeat),
            PacketKind::Request => read_compact(kind, payload.slice(2..), |b| {
                compact::read_request(b).map(|(s, r)| (s, PacketBody::Request(r)))
            }),
            PacketKind::Response => read_compact(kind, payload.slice(2..), |b| {
                compact::read_response(b).map(|(s, r)| (s, PacketBody::Response(r)))
            }),
            PacketKind::Event => read_body(kind, body, PacketBody::Event),
            PacketKind::StreamChunk => read_compact(kind, payload.slice(2..), |b| {
                compact::read_chunk(b).map(|(s, c)| (s, PacketBody::StreamChunk(c)))
            }),
            PacketKind::StreamEnd => read_body(kind, body, PacketBody::StreamEnd),
            PacketKind::StreamError => read_body(kind, body, PacketBody::StreamError),
            PacketKind::StreamCredit => read_body(kind, body, PacketBody::StreamCredit),
            PacketKind::Ping => read_body(kind, body, PacketBody::Ping),
            PacketKind::Pong => read_body(kind, body, PacketBody::Pong),
            PacketKind::Disconnect => read_body(kind, body, PacketBody::Disconnect),
        }?;
        Ok(Packet { sender, body })
    }
}

fn write_body<T: Serialize>(buf: &mut BytesMut, sender: &str, body: &T) -> Result<(), FrameError> {
    let mut writer = buf.writer();
    rmp_serde::encode::write_named(&mut writer, &(sender, body))
        .map_err(|e| FrameError::Encode(e.to_string()))
}

/// A packet's sender and body.
type Decoded = (Arc<str>, PacketBody);

/// Reads a compact body with `read`, refusing an empty sender.
fn read_compact(
    kind: PacketKind,
    body: Bytes,
    read: impl FnOnce(Bytes) -> Result<Decoded, String>,
) -> Result<Decoded, FrameError> {
    let (sender, body) = read(body).map_err(|reason| FrameError::Malformed { kind, reason })?;
    if sender.is_empty() {
        return Err(FrameError::Malformed {
            kind,
            reason: "empty sender".into(),
        });
    }
    Ok((sender, body))
}

fn read_body<T: DeserializeOwned>(
    kind: PacketKind,
    body: &[u8],
    wrap: fn(T) -> PacketBody,
) -> Result<Decoded, FrameError> {
    let (sender, body): (String, T) =
        rmp_serde::from_slice(body).map_err(|e| FrameError::Malformed {
            kind,
            reason: e.to_string(),
        })?;
    if sender.is_empty() {
        return Err(FrameError::Malformed {
            kind,
            reason: "empty sender".into(),
        });
    }
    Ok((sender.into(), wrap(body)))
}

/// Incremental decoder for a byte stream of frames (QUIC, TCP, Unix socket).
///
/// Feed it whatever arrived; it returns a packet once a whole frame is buffered and refuses an
/// oversized frame as soon as its length prefix is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameDecoder {
    codec: Codec,
}

impl FrameDecoder {
    /// A decoder using `codec`'s limit.
    pub fn new(codec: Codec) -> Self {
        Self { codec }
    }

    /// Takes one frame off the front of `buf`, if a whole one is there.
    ///
    /// On error the stream is unusable: the caller should close the link.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, FrameError> {
        match self.next_frame_len(buf)? {
            Some(len) => {
                buf.advance(4);
                let payload = buf.split_to(len).freeze();
                self.codec.decode_bytes(payload).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The length of the first frame if all of it is in `buf`; otherwise reserves room for the
    /// next [`RESERVE_AHEAD`] bytes of it at most.
    pub fn next_frame_len(&self, buf: &mut BytesMut) -> Result<Option<usize>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        self.codec.check_len(len)?;
        if buf.len() < 4 + len {
            // Room for what is likely to arrive next, not for what the peer announced: a length
            // prefix alone must not make us allocate the largest frame there is.
            buf.reserve((4 + len - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::packet::*;

    fn request() -> Packet {
        Packet::new(
            "node-a",
            PacketBody::Request(Request {
                id: 9,
                action: "math.add".into(),
                params: Bytes::from_static(b"\x82\xa1a\x01\xa1b\x02"),
                timeout_ms: Some(250),
                level: 2,
                request_id: 77,
                parent_id: Some(76),
                caller: Some("api".into()),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn round_trip() {
        let codec = Codec::default();
        let frame = codec.encode(&request()).unwrap();
        assert_eq!(codec.decode_frame(&frame).unwrap(), request());
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new(Codec::new(64));
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge { len: 256, max: 64 })
        );
        assert!(buf.capacity() < 256, "no room was reserved for the frame");
    }

    #[test]
    fn an_announced_length_reserves_only_what_may_arrive_next() {
        let mut decoder = FrameDecoder::new(Codec::default());
        let mut buf = BytesMut::from(&(DEFAULT_MAX_FRAME_LEN as u32).to_be_bytes()[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(
            buf.capacity() <= 4 + RESERVE_AHEAD,
            "a bare 16 MiB length prefix reserved {} bytes",
            buf.capacity()
        );
    }

    #[test]
    fn unknown_kind_and_version_are_clear_errors() {
        let codec = Codec::default();
        let mut frame = codec.encode(&request()).unwrap().to_vec();
        frame[5] = 200;
        assert_eq!(
            codec.decode_frame(&frame),
            Err(FrameError::UnknownKind(200))
        );
        frame[4] = 9;
        assert_eq!(
            codec.decode_frame(&frame),
            Err(FrameError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        #[derive(Serialize)]
        struct FutureHeartbeat {
            seq: u64,
            in_flight: u32,
            gpu_load: f32,
        }
        let mut frame = BytesMut::new();
        frame.put_u32(0);
        frame.put_u8(PROTOCOL_VERSION);
        frame.put_u8(PacketKind::Heartbeat as u8);
        let body = FutureHeartbeat {
            seq: 3,
            in_flight: 4,
            gpu_load: 0.5,
        };
        write_body(&mut frame, "n", &body).unwrap();
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let packet = Codec::default().decode_frame(&frame).unwrap();
        assert_eq!(
            packet.body,
            PacketBody::Heartbeat(Heartbeat {
                seq: 3,
                cpu: None,
                in_flight: 4
            })
        );
    }

    #[test]
    fn frames_split_anywhere_decode_in_order() {
        let codec = Codec::default();
        let mut stream = BytesMut::new();
        for _ in 0..3 {
            codec.encode_into(&request(), &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new(codec);
        let mut buf = BytesMut::new();
        let mut decoded = 0;
        for byte in stream.iter() {
            buf.put_u8(*byte);
            while let Some(packet) = decoder.decode(&mut buf).unwrap() {
                assert_eq!(packet, request());
                decoded += 1;
            }
        }
        assert_eq!(decoded, 3);
    }

    #[test]
    fn encoding_above_the_limit_fails_and_leaves_the_buffer_clean() {
        let codec = Codec::new(32);
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode_into(&request(), &mut buf),
            Err(FrameError::Encode(_))
        ));
        assert!(buf.is_empty());
    }
}
