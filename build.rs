//! Compiles every proto under `proto/` into Rust (prost + tonic) and writes
//! the FileDescriptorSet that server reflection and the gateway's
//! transcoding read at run time, and the same set without source info that
//! the access policies and request validation read.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs none.

use std::{
    env,
    path::{Path, PathBuf},
};

#[path = "src/proto/wire.rs"]
mod wire;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=src/proto/wire.rs");

    let mut protos = Vec::new();
    collect_protos(Path::new("proto/capsule"), &mut protos)?;
    // The error model, so reflection and the REST bridge can show details.
    collect_protos(Path::new("proto/google/rpc"), &mut protos)?;
    // Raw bodies (push events) through the REST bridge.
    protos.push(PathBuf::from("proto/google/api/httpbody.proto"));
    protos.sort();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Each message knows its full name, so the codec finds its descriptor.
    config.enable_type_names();

    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        // Every RPC is implemented: a new one fails the build of the
        // service that owns it until it is.
        .generate_default_stubs(false)
        // prost's codec plus one text check of every incoming message.
        .codec_path("crate::codec::CheckedCodec")
        .file_descriptor_set_path(out_dir.join("capsule_descriptor.bin"))
        .compile_with_config(config, &protos, &[PathBuf::from("proto"), well_known])?;
    write_lean_descriptor_set(&out_dir)?;

    write_migration_files(&out_dir.join("migration_files.rs"))?;
    Ok(())
}

/// The descriptor set without source info (comments and their spans, three
/// quarters of its bytes), for the descriptors every process decodes to
/// check calls; reflection still serves the whole set. Filtered on the wire:
/// decoded into prost's types, the options' extensions (permissions, HTTP
/// rules, validation rules) would be dropped.
fn write_lean_descriptor_set(out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use prost::encoding::{WireType, encode_key, encode_varint};

    /// `FileDescriptorProto.source_code_info`.
    const SOURCE_CODE_INFO: u32 = 9;
    let full = std::fs::read(out_dir.join("capsule_descriptor.bin"))?;
    let mut lean = Vec::with_capacity(full.len());
    for (_, file) in wire::files(&full)? {
        let mut kept = Vec::with_capacity(file.len());
        for (number, field) in wire::fields(file)? {
            if number != SOURCE_CODE_INFO {
                kept.extend_from_slice(field);
            }
        }
        encode_key(wire::FILE, WireType::LengthDelimited, &mut lean);
        encode_varint(kept.len() as u64, &mut lean);
        lean.extend_from_slice(&kept);
    }
    std::fs::write(out_dir.join("capsule_descriptor_lean.bin"), lean)?;
    Ok(())
}

/// Writes, for each service, the list of its migration files with the
/// SHA-256 of each `up.sql` (the checksum earlier builds recorded; the
/// harness computes the one it records now from the SQL's tokens).
fn write_migration_files(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use std::fmt::Write;

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("migrations");
    let mut code = String::new();
    for service in ["auth", "project", "deploy"] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join(service))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.is_dir())
            .collect();
        dirs.sort();
        writeln!(code, "pub static {}: &[MigrationFile] = &[", service.to_uppercase())?;
        for dir in dirs {
            let name = dir
                .file_name()
                .and_then(|name| name.to_str())
                .ok_or("a migration directory name is not UTF-8")?;
            let (version, description) = name
                .split_once("__")
                .ok_or_else(|| format!("migrations/{service}/{name}: expected V{{NNN}}__description"))?;
            let up_path = dir.join("up.sql");
            let up = std::fs::read(&up_path).map_err(|err| format!("{}: {err}", up_path.display()))?;
            let checksum: String = sha2_hex(&up);
            let down_path = dir.join("down.sql");
            let down = if down_path.is_file() {
                format!("Some(include_str!({:?}))", down_path.display().to_string())
            } else {
                "None".to_owned()
            };
            let metadata_path = dir.join("metadata.toml");
            let metadata = std::fs::read_to_string(&metadata_path).unwrap_or_default();
            let in_transaction = match metadata.parse::<toml::Table>() {
                Ok(table) => table
                    .get("run_in_transaction")
                    .map_or(Some(true), toml::Value::as_bool)
                    .ok_or_else(|| format!("{}: run_in_transaction must be true or false", metadata_path.display()))?,
                Err(err) => return Err(format!("{}: {err}", metadata_path.display()).into()),
            };
            let metadata = if metadata_path.is_file() {
                format!("include_str!({:?})", metadata_path.display().to_string())
            } else {
                "\"\"".to_owned()
            };
            writeln!(
                code,
                "    MigrationFile {{ version: {version:?}, name: {name:?}, description: {:?}, up: include_str!({:?}), down: {down}, sha256: {checksum:?}, run_in_transaction: {in_transaction}, metadata: {metadata} }},",
                description.replace('_', " "),
                up_path.display().to_string(),
            )?;
        }
        writeln!(code, "];")?;
    }
    writeln!(
        code,
        "pub static RELEASED: &str = include_str!({:?});",
        root.join("released.toml").display().to_string()
    )?;
    std::fs::write(out, code)?;
    Ok(())
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn collect_protos(dir: &Path, protos: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, protos)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            protos.push(path);
        }
    }
    Ok(())
}
