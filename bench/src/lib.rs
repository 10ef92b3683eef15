//! What the benchmark binaries share: settings from the environment, each
//! service's migrations, and starting a service as its own process.

use std::process::{Command, Stdio};

use capsule::{config::ServiceKind, migrate::MigrationSet};

/// A whole-number setting from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The embedded migrations of a service with a database.
pub fn migrations(kind: ServiceKind) -> &'static MigrationSet {
    match kind {
        ServiceKind::Auth => &capsule_auth::MIGRATIONS,
        ServiceKind::Project => &capsule_project::MIGRATIONS,
        ServiceKind::Deploy | ServiceKind::Gateway => &capsule_deploy::MIGRATIONS,
    }
}

/// `capsule serve <kind>` on `127.0.0.1:<port>` over `database_url`,
/// quiet (warnings only, no output kept) and without a drain delay; the
/// caller adds settings and spawns it.
pub fn serve(bin: &str, kind: ServiceKind, database_url: &str, port: u16) -> Command {
    let mut command = Command::new(bin);
    command
        .args(["serve", kind.name()])
        .env(format!("{}_DATABASE_URL", kind.env_prefix()), database_url)
        .env(kind.grpc_addr_variable(), format!("127.0.0.1:{port}"))
        .env("CAPSULE_DRAIN_DELAY_MS", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}
