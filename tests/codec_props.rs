//! Property tests for the frame codec: every packet survives a round trip, and no byte sequence
//! makes the decoder panic or allocate past its limit.

use bytes::{Bytes, BytesMut};
use phalanx::protocol::codec::{Codec, FrameDecoder};
use phalanx::protocol::packet::*;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9.$_-]{0,24}"
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from)
}

fn meta() -> impl Strategy<Value = Option<Meta>> {
    proptest::option::of(
        proptest::collection::btree_map(text(), any::<i64>(), 0..4).prop_map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, serde_json::Value::from(v)))
                .collect::<Meta>()
        }),
    )
}

fn body() -> impl Strategy<Value = PacketBody> {
    prop_oneof![
        Just(PacketBody::Discover(Discover {})),
        (
            text(),
            text(),
            any::<u64>(),
            proptest::collection::vec(text(), 0..3)
        )
            .prop_map(
                |(instance_id, namespace, seq, addresses)| PacketBody::Info(Info {
                    instance_id,
                    namespace,
                    seq,
                    addresses,
                    protocol_version: PROTOCOL_VERSION,
                    services: vec![ServiceInfo {
                        full_name: "v2.math".into(),
                        name: "math".into(),
                        version: Some("2".into()),
                        actions: vec![ActionInfo {
                            name: "v2.math.add".into(),
                            idempotent: true,
                            params_schema: Some(serde_json::json!({
                                "type": "object",
                                "properties": { "a": { "type": "integer" } }
                            })),
                            proto: Some(ProtoTypes {
                                params: "math.Pair".into(),
                                answer: "math.Sum".into(),
                                json: true,
                            }),
                        }],
                        events: vec![EventInfo {
                            name: "a.*".into(),
                            group: "g".into()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            ),
        (any::<u64>(), any::<u32>()).prop_map(|(seq, in_flight)| PacketBody::Heartbeat(
            Heartbeat {
                seq,
                cpu: None,
                in_flight
            }
        )),
        (
            any::<u64>(),
            text(),
            bytes(),
            meta(),
            proptest::option::of(any::<u64>()),
            any::<u32>()
        )
            .prop_map(
                |(id, action, params, meta, timeout_ms, level)| PacketBody::Request(Request {
                    id,
                    action: action.into(),
                    params,
                    meta,
                    timeout_ms,
                    level,
                    ..Default::default()
                })
            ),
        (
            any::<u64>(),
            proptest::option::of(bytes()),
            any::<u16>(),
            any::<bool>()
        )
            .prop_map(|(id, data, code, failed)| PacketBody::Response(Response {
                id,
                data,
                error: failed
                    .then(|| Box::new(phalanx::Error::handler(code, "T", "m").body().clone())),
                ..Default::default()
            })),
        (any::<u64>(), text(), bytes(), any::<bool>()).prop_map(|(id, event, data, broadcast)| {
            PacketBody::Event(Event {
                id,
                event,
                data,
                broadcast,
                groups: Some(vec!["g".into()]),
                ..Default::default()
            })
        }),
        (any::<u64>(), any::<u64>(), bytes()).prop_map(|(id, seq, data)| PacketBody::StreamChunk(
            StreamChunk {
                id,
                params: seq % 2 == 0,
                seq,
                data
            }
        )),
        (any::<u64>(), any::<bool>(), any::<u32>()).prop_map(|(id, params, chunks)| {
            PacketBody::StreamCredit(StreamCredit { id, params, chunks })
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(id, time_us)| PacketBody::Ping(Ping { id, time_us })),
        Just(PacketBody::Disconnect(Disconnect {})),
    ]
}

proptest! {
    #[test]
    fn every_packet_round_trips(sender in "[a-z][a-z0-9-]{0,20}", body in body()) {
        let codec = Codec::default();
        let packet = Packet::new(sender, body);
        let frame = codec.encode(&packet).unwrap();
        prop_assert_eq!(codec.decode_frame(&frame).unwrap(), packet.clone());

        let mut decoder = FrameDecoder::new(codec);
        let mut buf = BytesMut::from(&frame[..]);
        prop_assert_eq!(decoder.decode(&mut buf).unwrap(), Some(packet));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = Codec::new(1024);
        let _ = codec.decode_frame(&data);
        let mut decoder = FrameDecoder::new(codec);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        prop_assert!(buf.capacity() <= 4096, "decoder reserved {} bytes", buf.capacity());
    }

    #[test]
    fn corrupted_frames_never_panic(body in body(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let codec = Codec::default();
        let mut frame = codec.encode(&Packet::new("n", body)).unwrap().to_vec();
        for (at, byte) in flips {
            let at = 4 + at % (frame.len() - 4);
            frame[at] = byte;
        }
        let _ = codec.decode_frame(&frame);
    }
}
