//! Protobuf messages for tests, with their descriptors built in code (no `protoc` needed).

// The demo's descriptor builder, shared rather than written twice (its demo messages go unused).
#[allow(dead_code)]
#[path = "../../src/cli/shapes.rs"]
mod shapes;

use prost_reflect::DescriptorPool;
use prost_reflect::prost_types::field_descriptor_proto::Type;

/// `shop.Order { string item = 1; uint32 quantity = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Order {
    #[prost(string, tag = "1")]
    pub(crate) item: String,
    #[prost(uint32, tag = "2")]
    pub(crate) quantity: u32,
}

impl prost::Name for Order {
    const NAME: &'static str = "Order";
    const PACKAGE: &'static str = "shop";
}

/// `shop.Receipt { string item = 1; uint64 total_cents = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Receipt {
    #[prost(string, tag = "1")]
    pub(crate) item: String,
    #[prost(uint64, tag = "2")]
    pub(crate) total_cents: u64,
}

impl prost::Name for Receipt {
    const NAME: &'static str = "Receipt";
    const PACKAGE: &'static str = "shop";
}

/// The descriptors of `shop.Order` and `shop.Receipt`.
pub(crate) fn shop_descriptors() -> DescriptorPool {
    shapes::proto3_pool(
        "shop",
        &[
            (
                "Order",
                &[("item", Type::String), ("quantity", Type::Uint32)],
            ),
            (
                "Receipt",
                &[("item", Type::String), ("total_cents", Type::Uint64)],
            ),
        ],
    )
    .expect("valid descriptors")
}
