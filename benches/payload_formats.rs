//! What each payload format costs: encode then decode, as a call's params or answer go through
//! them (`Payload::encode_as` on one side, `Payload::decode` on the other), for a small message
//! and a 64 KiB one — MessagePack (the default), JSON (per call, or `Json`) and Protobuf
//! (`Proto`, prost).
//!
//! Run: `cargo bench --bench payload_formats`

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phalanx::{ContentType, Payload, Proto};
use serde::{Deserialize, Serialize};
use std::hint::black_box;

/// The same order as a serde type and as a prost message.
#[derive(Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    quantity: u32,
    note: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OrderMessage {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    item: String,
    #[prost(uint32, tag = "3")]
    quantity: u32,
    #[prost(string, tag = "4")]
    note: String,
}

/// An order whose note is `note_len` bytes long.
fn order(note_len: usize) -> (Order, OrderMessage) {
    let note = "n".repeat(note_len);
    let order = Order {
        id: 42,
        item: "tea".into(),
        quantity: 3,
        note,
    };
    let message = OrderMessage {
        id: order.id,
        item: order.item.clone(),
        quantity: order.quantity,
        note: order.note.clone(),
    };
    (order, message)
}

/// Encodes as a sender would and decodes as a receiver would.
fn round_trip<T>(value: T, format: ContentType) -> T
where
    T: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let (bytes, format): (Bytes, ContentType) =
        Payload::local(value).encode_as(format).expect("encodes");
    Payload::encoded(bytes, format).decode().expect("decodes")
}

fn formats(c: &mut Criterion) {
    let mut group = c.benchmark_group("payload_formats");
    for (size, note_len) in [("small", 16), ("64KiB", 64 * 1024)] {
        let (order, message) = order(note_len);
        let encoded_len = Payload::local(order.clone())
            .encode()
            .expect("encodes")
            .0
            .len();
        group.throughput(Throughput::Bytes(encoded_len as u64));
        group.bench_function(BenchmarkId::new("msgpack", size), |b| {
            b.iter(|| black_box(round_trip(order.clone(), ContentType::MsgPack)))
        });
        group.bench_function(BenchmarkId::new("json", size), |b| {
            b.iter(|| black_box(round_trip(order.clone(), ContentType::Json)))
        });
        group.bench_function(BenchmarkId::new("protobuf", size), |b| {
            b.iter(|| black_box(round_trip(Proto(message.clone()), ContentType::MsgPack)))
        });
        group.bench_function(BenchmarkId::new("clone only (baseline)", size), |b| {
            b.iter(|| black_box(order.clone()))
        });
    }
    group.finish();
}

criterion_group!(benches, formats);
criterion_main!(benches);
