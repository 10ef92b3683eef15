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
    // builds only (the names carry hashes of the release profile), and only
    // with lld, Rust's default linker on x86_64 Linux since 1.90: GNU ld
    // and gold do not know the option.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = std::path::Path::new(&manifest).join("link-order.txt");
    let release = std::env::var("PROFILE").is_ok_and(|profile| profile == "release");
    let rustc = rustc_version().unwrap_or_default();
    if os == "linux"
        && env == "gnu"
        && arch == "x86_64"
        && release
        && default_lld(&rustc)
        && let Ok(list) = std::fs::read_to_string(&order)
    {
        // A list made with another compiler names other symbols.
        let made_with = list
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# "))
            .unwrap_or_default();
        if made_with != rustc {
            println!(
                "cargo:warning=services/capsule/link-order.txt was made with {made_with}, this is {rustc}: \
                 rerun scripts/link-order"
            );
        }
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names of another build (other crate versions) are skipped.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    for variable in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_LINKER",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={variable}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link-order.txt");
}

/// `rustc --version` of the compiler building this crate.
fn rustc_version() -> Option<String> {
    let rustc = std::env::var("RUSTC").ok()?;
    let output = std::process::Command::new(rustc).arg("--version").output().ok()?;
    Some(String::from_utf8(output.stdout).ok()?.trim().to_owned())
}

/// Whether the link runs Rust's own lld: Rust 1.90 or later, with no other
/// linker configured and lld not turned off.
fn default_lld(rustc: &str) -> bool {
    let minor = rustc
        .split_whitespace()
        .nth(1)
        .and_then(|version| version.split('.').nth(1));
    let recent = minor
        .and_then(|minor| minor.parse::<u32>().ok())
        .is_some_and(|minor| minor >= 90);
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let other_linker = flags.split('\x1f').any(|flag| {
        flag.contains("linker-features=-lld")
            || flag.contains("linker=")
            || (flag.contains("-fuse-ld=") && !flag.contains("-fuse-ld=lld"))
    });
    let configured = ["RUSTC_LINKER", "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER"]
        .iter()
        .any(|variable| std::env::var_os(variable).is_some());
    recent && !other_linker && !configured
}
