//! Compiles proto/presence/v1 with protox (no system protoc) and writes the
//! encoded descriptor set to OUT_DIR for gRPC reflection.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "presence/v1/common.proto",
    "presence/v1/auth.proto",
    "presence/v1/directory.proto",
    "presence/v1/policy.proto",
    "presence/v1/presence.proto",
];

/// Enum fields rendered by name (not number) in JSON output.
const ENUM_FIELDS: &[(&str, &str)] = &[
    ("presence.v1.UserPrincipal.scope", "scope"),
    ("presence.v1.User.scope", "scope"),
    ("presence.v1.User.kind", "user_kind"),
    ("presence.v1.AnsweringRule.condition", "rule_condition"),
    ("presence.v1.PresenceSettings.visibility", "visibility"),
    (
        "presence.v1.PresenceSettings.caller_id_visibility",
        "caller_id_visibility",
    ),
    ("presence.v1.Decision.rule", "rule"),
    ("presence.v1.WatcherEntry.rule", "rule"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("presence_descriptor.bin"), fds.encode_to_vec())?;

    let mut builder = tonic_prost_build::configure()
        .codec_path("crate::codec::CompactCodec")
        .type_attribute(".presence.v1", "#[derive(serde::Serialize)]");
    for (field, with) in ENUM_FIELDS {
        builder = builder.field_attribute(
            field,
            format!("#[serde(serialize_with = \"crate::json::{with}\")]"),
        );
    }
    builder.compile_fds(fds)?;
    frame_server();
    Ok(())
}

/// The server of `presence.v1.PresenceService` whose `Watch` sends
/// pre-encoded frames (`crate::frame`): same routes, same messages on the
/// wire, no per-stream encoding. Written to
/// `OUT_DIR/presence.v1.PresenceService.rs`.
fn frame_server() {
    use tonic_prost_build::manual::{Builder, Method, Service};
    let unary = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::v1::{input}"))
            .output_type(format!("crate::v1::{output}"))
            .codec_path("crate::codec::CompactCodec")
            .build()
    };
    let service = Service::builder()
        .name("PresenceService")
        .package("presence.v1")
        .method(unary(
            "publish",
            "Publish",
            "PublishRequest",
            "PublishResponse",
        ))
        .method(unary(
            "get_presence",
            "GetPresence",
            "GetPresenceRequest",
            "GetPresenceResponse",
        ))
        .method(
            Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::v1::WatchRequest")
                .output_type("crate::frame::Frame")
                .codec_path("crate::frame::FrameCodec")
                .server_streaming()
                .build(),
        )
        .method(
            Method::builder()
                .name("watch_many")
                .route_name("WatchMany")
                .input_type("crate::v1::WatchManyRequest")
                .output_type("crate::frame::ManyFrame")
                .codec_path("crate::frame::ManyCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
}
