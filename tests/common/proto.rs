//! Protobuf messages for tests, with their descriptors built in code (no `protoc` needed).

use prost_reflect::DescriptorPool;
use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
use prost_reflect::prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
};

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
    let field = |name: &str, number: i32, kind: Type| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional.into()),
        r#type: Some(kind.into()),
        ..Default::default()
    };
    let message = |name: &str, fields: Vec<FieldDescriptorProto>| DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("shop.proto".into()),
        package: Some("shop".into()),
        syntax: Some("proto3".into()),
        message_type: vec![
            message(
                "Order",
                vec![
                    field("item", 1, Type::String),
                    field("quantity", 2, Type::Uint32),
                ],
            ),
            message(
                "Receipt",
                vec![
                    field("item", 1, Type::String),
                    field("total_cents", 2, Type::Uint64),
                ],
            ),
        ],
        ..Default::default()
    };
    DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] })
        .expect("valid descriptors")
}
