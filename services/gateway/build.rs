//! Compiles the test-only echo proto (and its descriptor set) used by the
//! transcoding tests: a service the gateway has no code for.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tests/proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .file_descriptor_set_path(out_dir.join("echo_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("tests/proto/echo.proto")],
            &[
                PathBuf::from("tests/proto"),
                PathBuf::from("../../proto"),
                protoc_bin_vendored::include_path()?,
            ],
        )?;
    Ok(())
}
