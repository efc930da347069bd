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
    proto3_pool(
        "demo",
        &[
            ("Rect", &[("width", Type::Uint32), ("height", Type::Uint32)]),
            ("Area", &[("area", Type::Uint64), ("square", Type::Bool)]),
        ],
    )
    .map_err(|e| phalanx::Error::validation(format!("demo descriptors: {e}")))
}

/// The descriptors of one proto3 file of `package` holding `messages`, each with its scalar
/// fields numbered from 1 in order — what `protoc` would write, without `protoc`.
pub(crate) fn proto3_pool(
    package: &str,
    messages: &[(&str, &[(&str, Type)])],
) -> Result<DescriptorPool, prost_reflect::DescriptorError> {
    let message_type = messages
        .iter()
        .map(|(name, fields)| DescriptorProto {
            name: Some((*name).into()),
            field: fields
                .iter()
                .zip(1..)
                .map(|((field, kind), number)| FieldDescriptorProto {
                    name: Some((*field).into()),
                    number: Some(number),
                    label: Some(Label::Optional.into()),
                    r#type: Some((*kind).into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let file = FileDescriptorProto {
        name: Some(format!("{package}.proto")),
        package: Some(package.into()),
        syntax: Some("proto3".into()),
        message_type,
        ..Default::default()
    };
    DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] })
}
