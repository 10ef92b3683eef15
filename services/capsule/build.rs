//! Link options of the `capsule` binary.

fn main() {
    // A position-independent binary is relocated at every start. Packed
    // relative relocations (DT_RELR, glibc 2.36) put the 100,000-odd
    // pointer fix-ups in a few kilobytes instead of 2.5 MB of `.rela.dyn`
    // that the loader reads, page after page, into every process: the
    // same addresses, randomised as before, for less memory.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
