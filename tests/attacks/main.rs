//! Attacks on the platform as an ordinary account mounts them: through the
//! public API, with nothing but its own projects, variables, code and URLs.
//! Each test mounts one attack that once worked and checks that it no
//! longer does, by what the attacker would have gained (a file written on
//! the host, a connection to a listener of the host's, a log line read
//! after the right to read it ended).

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

#[path = "../common/mod.rs"]
mod common;

mod app_socket;
mod caps;
mod connections;
mod deploy_keys;
mod disk;
mod egress;
mod fairness;
mod forwarded;
mod git_urls;
mod host_labels;
mod invitations;
mod launcher;
mod private_repo;
mod sandbox_users;
mod secrets_at_rest;
mod streams;

use common::{TestMesh, deploy::logs_until};

/// A mesh with the local runner, as `capsule dev` runs it.
async fn runner_mesh(extra: &[(&'static str, &'static str)]) -> TestMesh {
    let mut deploy = vec![("DEPLOY_START_TIMEOUT_SECS", "20"), ("DEPLOY_DRAIN_SECS", "1")];
    deploy.extend_from_slice(extra);
    common::start_with(common::Options {
        local_runner: true,
        deploy,
        ..Default::default()
    })
    .await
}

/// A path on the host that only a process outside every sandbox could
/// create: each sandbox has a `/tmp` of its own.
fn host_marker(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("capsule-attack-{what}-{}", uuid::Uuid::new_v4()))
}
