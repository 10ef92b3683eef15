//! Services as operators run them: `capsule serve` processes.

#![allow(dead_code, reason = "each test binary uses part of it")]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use capsule::testing;

/// `capsule serve <service>` with `env`, its output discarded.
pub fn serve(service: &str, env: &[(&str, String)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capsule"));
    command
        .args(["serve", service])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("the capsule binary starts")
}

/// Free addresses for a mesh: auth, project, deploy, gateway gRPC, and the
/// gateway's REST port.
pub async fn addresses() -> [SocketAddr; 5] {
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); 5];
    for addr in &mut addrs {
        *addr = testing::free_listener().await.local_addr().expect("a bound listener");
    }
    addrs
}

/// Where every service listens and finds the others; `url` makes a
/// service's URL from its address (`http://…`, `https://localhost:…`).
pub fn mesh_env(addrs: &[SocketAddr; 5], url: impl Fn(SocketAddr) -> String) -> Vec<(&'static str, String)> {
    vec![
        ("AUTH_GRPC_ADDR", addrs[0].to_string()),
        ("PROJECT_GRPC_ADDR", addrs[1].to_string()),
        ("DEPLOY_GRPC_ADDR", addrs[2].to_string()),
        ("GATEWAY_GRPC_ADDR", addrs[3].to_string()),
        ("GATEWAY_HTTP_ADDR", addrs[4].to_string()),
        ("AUTH_SERVICE_URL", url(addrs[0])),
        ("PROJECT_SERVICE_URL", url(addrs[1])),
        ("DEPLOY_SERVICE_URL", url(addrs[2])),
        ("GATEWAY_RATE_LIMIT_PER_SEC", "100000".to_owned()),
        ("GATEWAY_RATE_LIMIT_BURST", "100000".to_owned()),
    ]
}
