//! The Protobuf messages of `demo.area` (`demo.Rect` in, `demo.Area` out), with their
//! descriptors built in code, so JSON callers — the CLI, the gateway — can call it.

use prost_reflect::DescriptorPool;
use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
use prost_reflect::prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
};

/// `message Rect { uint32 width = 1; uint32 height = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Rect {
    #[prost(uint32, tag = "1")]
    pub(crate) width: u32,
    #[prost(uint32, tag = "2")]
    pub(crate) height: u32,
}

impl prost::Name for Rect {
    const NAME: &'static str = "Rect";
    const PACKAGE: &'static str = "demo";
}

/// `message Area { uint64 area = 1; bool square = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Area {
    #[prost(uint64, tag = "1")]
    pub(crate) area: u64,
    #[prost(bool, tag = "2")]
    pub(crate) square: bool,
}

impl prost::Name for Area {
    const NAME: &'static str = "Area";
    const PACKAGE: &'static str = "demo";
}

impl Rect {
    pub(crate) fn area(&self) -> Area {
        Area {
            area: u64::from(self.width) * u64::from(self.height),
            square: self.width == self.height,
        }
    }
}

/// The descriptors of `demo.Rect` and `demo.Area` (what `protoc` would write for them).
pub(crate) fn descriptors() -> phalanx::Result<DescriptorPool> {
    let field = |name: &str, number: i32, kind: Type| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional.into()),
        r#type: Some(kind.into()),
        ..Default::default()
    };
    let rect = DescriptorProto {
        name: Some("Rect".into()),
        field: vec![
            field("width", 1, Type::Uint32),
            field("height", 2, Type::Uint32),
        ],
        ..Default::default()
    };
    let area = DescriptorProto {
        name: Some("Area".into()),
        field: vec![
            field("area", 1, Type::Uint64),
            field("square", 2, Type::Bool),
        ],
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("demo.proto".into()),
        package: Some("demo".into()),
        syntax: Some("proto3".into()),
        message_type: vec![rect, area],
        ..Default::default()
    };
    DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] })
        .map_err(|e| phalanx::Error::validation(format!("demo descriptors: {e}")))
}
