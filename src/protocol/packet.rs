//! The packets of protocol v2 (DESIGN.md §3 describes v1; v2 frames REQUEST and RESPONSE
//! compactly, see `compact.rs`), as plain serde types.
//!
//! The packet set follows the Moleculer model: discovery (`DISCOVER`, `INFO`), liveness
//! (`HEARTBEAT`, `PING`/`PONG`, `DISCONNECT`), calls (`REQUEST`/`RESPONSE`), events (`EVENT`) and
//! streams (`STREAM_*`). Bodies are MessagePack maps, so fields a peer does not know are ignored and
//! optional fields may be missing. User payloads (`params`, `data`) stay opaque bytes tagged with a
//! [`ContentType`]: routing never decodes them.
//!
//! ```
//! use phalanx::protocol::packet::{Packet, PacketBody, PacketKind, Ping};
//!
//! let packet = Packet::new("node-1", PacketBody::Ping(Ping { id: 7, time_us: 42 }));
//! assert_eq!(packet.kind(), PacketKind::Ping);
//! ```

use crate::error::ErrorBody;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The protocol version every frame carries.
pub const PROTOCOL_VERSION: u8 = 2;

/// Call metadata: free-form values that travel with a request and its nested calls.
pub type Meta = serde_json::Map<String, serde_json::Value>;

/// String headers that travel with a request or event.
pub type Headers = BTreeMap<String, String>;

/// How an opaque payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum ContentType {
    /// MessagePack with named fields (the default).
    #[default]
    MsgPack,
    /// UTF-8 JSON.
    Json,
    /// Raw bytes, never decoded by Phalanx.
    Raw,
    /// Protocol Buffers, decoded by the user.
    Protobuf,
}

impl From<ContentType> for u8 {
    fn from(value: ContentType) -> Self {
        match value {
            ContentType::MsgPack => 0,
            ContentType::Json => 1,
            ContentType::Raw => 2,
            ContentType::Protobuf => 3,
        }
    }
}

impl TryFrom<u8> for ContentType {
    type Error = String;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Ok(match value {
            0 => Self::MsgPack,
            1 => Self::Json,
            2 => Self::Raw,
            3 => Self::Protobuf,
            other => return Err(format!("unknown content type {other}")),
        })
    }
}

/// The kind byte in a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketKind {
    /// Ask for INFO.
    Discover = 1,
    /// A node's identity and services.
    Info = 2,
    /// Liveness and load.
    Heartbeat = 3,
    /// A call.
    Request = 4,
    /// The answer to a call.
    Response = 5,
    /// An event.
    Event = 6,
    /// A piece of a stream.
    StreamChunk = 7,
    /// The end of a stream.
    StreamEnd = 8,
    /// A stream that failed.
    StreamError = 9,
    /// Latency probe.
    Ping = 10,
    /// Answer to a probe.
    Pong = 11,
    /// Graceful leave.
    Disconnect = 12,
    /// More room for a stream's chunks.
    StreamCredit = 13,
}

impl PacketKind {
    /// Parses a kind byte; `None` for kinds this version does not know.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Discover,
            2 => Self::Info,
            3 => Self::Heartbeat,
            4 => Self::Request,
            5 => Self::Response,
            6 => Self::Event,
            7 => Self::StreamChunk,
            8 => Self::StreamEnd,
            9 => Self::StreamError,
            10 => Self::Ping,
            11 => Self::Pong,
            12 => Self::Disconnect,
            13 => Self::StreamCredit,
            _ => return None,
        })
    }
}

/// A packet: who sent it and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Node id of the sender.
    pub sender: Arc<str>,
    /// The body.
    pub body: PacketBody,
}

impl Packet {
    /// A packet from `sender`.
    pub fn new(sender: impl Into<Arc<str>>, body: PacketBody) -> Self {
        Self {
            sender: sender.into(),
            body,
        }
    }

    /// Bytes of application data it carries (params, result, event data or stream chunk), for
    /// sizing its frame.
    pub fn payload_len(&self) -> usize {
        match &self.body {
            PacketBody::Request(r) => r.params.len(),
            PacketBody::Response(r) => r.data.as_ref().map_or(0, |d| d.len()),
            PacketBody::Event(e) => e.data.len(),
            PacketBody::StreamChunk(c) => c.data.len(),
            _ => 0,
        }
    }

    /// The kind byte this packet is framed with.
    pub fn kind(&self) -> PacketKind {
        self.body.kind()
    }
}

/// Every packet body of protocol v2.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum PacketBody {
    Discover(Discover),
    Info(Info),
    Heartbeat(Heartbeat),
    Request(Request),
    Response(Response),
    Event(Event),
    StreamChunk(StreamChunk),
    StreamEnd(StreamEnd),
    StreamError(StreamError),
    StreamCredit(StreamCredit),
    Ping(Ping),
    Pong(Pong),
    Disconnect(Disconnect),
}

impl PacketBody {
    /// The kind byte for this body.
    pub fn kind(&self) -> PacketKind {
        match self {
            Self::Discover(_) => PacketKind::Discover,
            Self::Info(_) => PacketKind::Info,
            Self::Heartbeat(_) => PacketKind::Heartbeat,
            Self::Request(_) => PacketKind::Request,
            Self::Response(_) => PacketKind::Response,
            Self::Event(_) => PacketKind::Event,
            Self::StreamChunk(_) => PacketKind::StreamChunk,
            Self::StreamEnd(_) => PacketKind::StreamEnd,
            Self::StreamError(_) => PacketKind::StreamError,
            Self::StreamCredit(_) => PacketKind::StreamCredit,
            Self::Ping(_) => PacketKind::Ping,
            Self::Pong(_) => PacketKind::Pong,
            Self::Disconnect(_) => PacketKind::Disconnect,
        }
    }
}

/// Ask a peer for its INFO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Discover {}

/// A node's identity, addresses and services.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Info {
    /// Changes on every restart of the node.
    pub instance_id: String,
    /// Nodes only see nodes of the same namespace.
    pub namespace: String,
    /// Identity of the host (nodes with equal ids share a machine).
    pub host_id: String,
    /// Addresses where the node accepts links.
    pub addresses: Vec<String>,
    /// Protocol version the node speaks.
    pub protocol_version: u8,
    /// Version of the Phalanx crate.
    pub client_version: String,
    /// Increases whenever the node's services change.
    pub seq: u64,
    /// The node's services.
    pub services: Vec<ServiceInfo>,
    /// Peers the node knows (gossip), so one seed is enough to find the whole mesh.
    pub peers: Vec<PeerInfo>,
    /// Free-form node metadata.
    pub metadata: Meta,
    /// This node's addresses signed with its certificate key, for others to pass on by gossip.
    pub address_record: Option<Bytes>,
}

/// A peer passed on by gossip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerInfo {
    /// The peer's node id.
    pub node_id: String,
    /// Where it accepts links.
    pub addresses: Vec<String>,
    /// The peer's own signed record of its addresses (from its INFO), passed on unchanged; a
    /// gossiped peer is only dialed at addresses such a record vouches for.
    pub address_record: Option<Bytes>,
}

/// A service as announced in INFO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceInfo {
    /// Full name including version prefix, e.g. `v2.math`.
    pub full_name: String,
    /// Bare name, e.g. `math`.
    pub name: String,
    /// Version, if any.
    pub version: Option<String>,
    /// Actions by full name, e.g. `v2.math.add`.
    pub actions: Vec<ActionInfo>,
    /// Event subscriptions.
    pub events: Vec<EventInfo>,
    /// Public settings.
    pub settings: Meta,
    /// Free-form metadata.
    pub metadata: Meta,
}

/// An action as announced in INFO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActionInfo {
    /// Full action name, e.g. `v2.math.add`.
    pub name: String,
    /// The service declares that running the action twice is harmless, so callers may retry it
    /// after failures where it may have run.
    pub idempotent: bool,
    /// The parameters as a JSON Schema, when the service declares them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params_schema: Option<serde_json::Value>,
    /// The Protobuf messages the action takes and answers, for a Protobuf action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<ProtoTypes>,
}

/// What a Protobuf action takes and answers, as announced in INFO.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProtoTypes {
    /// Full name of the params message, e.g. `shop.Order`.
    pub params: String,
    /// Full name of the answer message.
    pub answer: String,
    /// Whether the service publishes its descriptors, so JSON callers can call it too.
    pub json: bool,
}

/// An event subscription as announced in INFO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventInfo {
    /// Event name or pattern (`*` one segment, `**` any).
    pub name: String,
    /// Balancing group.
    pub group: String,
}

/// Liveness and load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    /// The sender's INFO seq, so a stale registry can ask again.
    pub seq: u64,
    /// CPU load in percent, if measured.
    pub cpu: Option<f32>,
    /// Requests the sender is handling.
    pub in_flight: u32,
}

/// A call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    /// Correlates the response on this link.
    pub id: u64,
    /// Full action name.
    pub action: Arc<str>,
    /// Encoded parameters.
    pub params: Bytes,
    /// How `params` is encoded.
    pub content_type: ContentType,
    /// Call metadata.
    pub meta: Option<Meta>,
    /// Headers.
    pub headers: Option<Headers>,
    /// Milliseconds left before the caller's deadline; `None` for no deadline.
    pub timeout_ms: Option<u64>,
    /// Nesting depth of the call chain (1 for a top-level call).
    pub level: u32,
    /// Id of the whole call chain.
    pub request_id: u64,
    /// Id of the context that made this call.
    pub parent_id: Option<u64>,
    /// Service that made the call.
    pub caller: Option<String>,
    /// The params continue as a stream, declared so.
    pub stream: Option<StreamInfo>,
}

/// What is declared of a byte stream when it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInfo {
    /// Its length in bytes, when known.
    pub len: Option<u64>,
    /// Its content type, when known.
    pub content_type: Option<String>,
}

/// The answer to a call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// Encoded result when the call succeeded.
    pub data: Option<Bytes>,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The error when the call failed (boxed: rare, and it is most of an answer's size, which
    /// every step of the hot path moves).
    pub error: Option<Box<ErrorBody>>,
    /// Metadata returned by the handler.
    pub meta: Option<Meta>,
    /// Headers.
    pub headers: Option<Headers>,
    /// Whether the data continues as a stream.
    pub stream: bool,
}

/// An event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// Event id.
    pub id: u64,
    /// Event name.
    pub event: String,
    /// Encoded payload.
    pub data: Bytes,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// Groups that should handle it; `None` for every local group.
    pub groups: Option<Vec<String>>,
    /// Whether it was broadcast.
    pub broadcast: bool,
    /// Metadata.
    pub meta: Option<Meta>,
    /// Headers.
    pub headers: Option<Headers>,
    /// Nesting depth.
    pub level: u32,
    /// Id of the call chain.
    pub request_id: u64,
    /// Service that emitted it.
    pub caller: Option<String>,
}

/// A piece of a stream, from its producer. A call has up to two streams: its params' (the
/// caller produces it) and its result's (the callee produces it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamChunk {
    /// The call's id (the caller's request id).
    pub id: u64,
    /// The params' stream (`false`: the result's).
    pub params: bool,
    /// Sequence number, from 0.
    pub seq: u64,
    /// The bytes.
    pub data: Bytes,
}

/// The end of a stream, from its producer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamEnd {
    /// The call's id.
    pub id: u64,
    /// The params' stream (`false`: the result's).
    pub params: bool,
    /// Number of chunks sent.
    pub seq: u64,
}

/// A stream that failed (from its producer) or that its reader gave up (from its consumer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamError {
    /// The call's id.
    pub id: u64,
    /// The params' stream (`false`: the result's).
    pub params: bool,
    /// Sent by the caller of the call (else by the callee).
    pub from_caller: bool,
    /// Why it failed.
    pub error: ErrorBody,
}

/// Lets a stream's producer send more chunks, from its consumer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamCredit {
    /// The call's id.
    pub id: u64,
    /// The params' stream (`false`: the result's).
    pub params: bool,
    /// How many more chunks may be sent.
    pub chunks: u32,
}

/// Latency probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ping {
    /// Probe id.
    pub id: u64,
    /// Sender's clock, microseconds since the Unix epoch.
    pub time_us: u64,
}

/// Answer to a probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pong {
    /// Probe id.
    pub id: u64,
    /// The probe's `time_us`, echoed.
    pub time_us: u64,
    /// Responder's clock when the probe arrived.
    pub arrived_us: u64,
}

/// Graceful leave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Disconnect {}
