//! The tenant's variables against the programs the host starts: a project
//! variable named `PATH` once made the runner start the tenant's own
//! `prlimit` on the host, outside every namespace, and `LD_PRELOAD` loaded
//! the tenant's library into it.

use std::time::Duration;

use capsule::proto::deploy::v1::DeploymentState;

use super::{host_marker, logs_until, runner_mesh};
use crate::common::deploy::{app, deploy, set_variable, wait_for};

/// The first deployment leaves a trap in its (live) working directory: a
/// `prlimit` and a `bwrap` that would mark the host, and a library whose
/// constructor would; it reads its working directory's host path from its
/// own mount table, as an attacker does.
fn trap(marker: &std::path::Path) -> String {
    let marker = marker.display();
    format!(
        r#"mkdir -p .pwn
for tool in prlimit bwrap nsenter socat; do
  printf '#!/bin/sh\necho pwned > {marker}\nexec /usr/bin/%s "$@"\n' "$tool" > .pwn/$tool
  chmod 755 .pwn/$tool
done
printf '#include <fcntl.h>\n__attribute__((constructor)) static void pwn(void) {{ open("{marker}", O_CREAT | O_WRONLY, 0644); }}\n' > .pwn/evil.c
gcc -shared -fPIC -o .pwn/evil.so .pwn/evil.c 2>&1 || echo no-compiler
chmod -R a+rX .pwn
echo "hostpath=$(awk '$5 == "/workspace" {{print $4}}' /proc/self/mountinfo)"
echo "path=$PATH"
echo "trap-set-$((6 * 7))"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_ld_preload_variables_run_nothing_of_the_tenant_on_the_host() {
    let mesh = runner_mesh(&[]).await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let marker = host_marker("launcher");
    let project = app(
        &mesh,
        &mallory,
        &trap(&marker),
        "exec python3 -m http.server \"$PORT\"",
        &[],
    )
    .await;
    let first = deploy(&mesh, &mallory, &project).await;
    let first_logs = logs_until(&mesh, &mallory, &first.id, "trap-set-42").await;
    wait_for(
        &mesh,
        &mallory,
        &first.id,
        DeploymentState::Live,
        Duration::from_secs(40),
    )
    .await;
    let host_path = first_logs
        .lines()
        .find_map(|line| line.strip_prefix("hostpath="))
        .unwrap()
        .to_owned();

    // The variables an attacker sets, then a second deployment of the same
    // project: its launcher would be the tenant's if variables reached it.
    let path = format!("{host_path}/.pwn:/usr/bin:/bin");
    set_variable(&mesh, &mallory, &project, "PATH", &path, false).await;
    let preload = format!("{host_path}/.pwn/evil.so");
    set_variable(&mesh, &mallory, &project, "LD_PRELOAD", &preload, false).await;
    set_variable(
        &mesh,
        &mallory,
        &project,
        "GLIBC_TUNABLES",
        "glibc.malloc.check=3",
        false,
    )
    .await;
    let second = deploy(&mesh, &mallory, &project).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut client = mesh.deploys().await;
    loop {
        let state = client
            .get_deployment(crate::common::authed(
                capsule::proto::deploy::v1::GetDeploymentRequest {
                    deployment_id: second.id.clone(),
                },
                &mallory,
            ))
            .await
            .unwrap()
            .into_inner()
            .state;
        if state == DeploymentState::Live as i32 || state == DeploymentState::Failed as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second deployment never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !marker.exists(),
        "a program of the tenant's ran on the host: {} was written",
        marker.display()
    );
    // The variables still reach the tenant's own processes, inside.
    let seen = logs_until(&mesh, &mallory, &second.id, "trap-set-42").await;
    assert!(seen.contains(&format!("path={path}")), "{seen}");
    let _ = std::fs::remove_file(&marker);
    mesh.stop().await;
}
