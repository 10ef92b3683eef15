//! Link options of the `capsule` binary.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // A position-independent binary is relocated at every start. Packed
        // relative relocations (DT_RELR, glibc 2.36) put the 100,000-odd
        // pointer fix-ups in a few kilobytes instead of 2.5 MB of `.rela.dyn`
        // that the loader reads, page after page, into every process: the
        // same addresses, randomised as before, for less memory.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // The functions a service runs (start-up, idle, serving calls) side by
    // side at the start of `.text` (`scripts/link-order` writes the list):
    // each page fault on code maps the 64 KiB around it, so code scattered
    // over the binary's 30-odd MB keeps far more of it resident. Release
    // builds only (the names carry hashes of the release profile); lld,
    // Rust's default linker on x86_64 Linux since 1.90, takes the list.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = std::path::Path::new(&manifest).join("link-order.txt");
    let release = std::env::var("PROFILE").is_ok_and(|profile| profile == "release");
    let lld = arch == "x86_64" && rustc_minor().is_some_and(|minor| minor >= 90);
    if os == "linux" && env == "gnu" && lld && release && order.exists() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names of another build (other crate versions) are skipped.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link-order.txt");
}

/// The minor version of the compiler building this crate (`1.95.0` → 95).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").ok()?;
    let output = std::process::Command::new(rustc).arg("--version").output().ok()?;
    let version = String::from_utf8(output.stdout).ok()?;
    version.split_whitespace().nth(1)?.split('.').nth(1)?.parse().ok()
}
