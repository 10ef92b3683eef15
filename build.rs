//! Compiles every proto under `proto/` into Rust (prost + tonic) and writes
//! the FileDescriptorSet that server reflection, the token layer's access
//! policies and the gateway's transcoding read at run time.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs none.

use std::{
    env,
    path::{Path, PathBuf},
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let mut protos = Vec::new();
    collect_protos(Path::new("proto/capsule"), &mut protos)?;
    protos.sort();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        // RPCs not implemented yet answer UNIMPLEMENTED instead of failing
        // the build of the service that owns them.
        .generate_default_stubs(true)
        .file_descriptor_set_path(out_dir.join("capsule_descriptor.bin"))
        .compile_with_config(config, &protos, &[PathBuf::from("proto"), well_known])?;
    Ok(())
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
