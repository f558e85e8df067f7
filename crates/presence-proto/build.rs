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
    Ok(())
}
