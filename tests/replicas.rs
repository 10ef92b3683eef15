//! Apps that stay up across runners: a live app runs as several copies,
//! each on a runner of its own, and the gateway takes them in turn. When
//! a runner dies (SIGKILL: no goodbye), the gateway passes over its copy
//! at once and another runner starts a replacement from the release its
//! builder left with the deploy service.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use capsule::{config::ServiceKind, proto::project::v1 as project_pb};
use common::{
    TestMesh,
    deploy::{app, deploy_live, fetch, host_label, logs, text, update_settings},
};

/// The runner process of the failover test (started by it, as
/// `capsule runner` would be): the runner of `CAPSULE_TEST_RUNNER_URL`
/// with the token and working directory it is given, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the runner process the failover test starts"]
async fn runner_process() {
    let source = |name: &str| {
        let name = match name {
            "DEPLOY_SERVICE_URL" => "CAPSULE_TEST_RUNNER_URL",
            other => other,
        };
        std::env::var(name).ok()
    };
    let connection = capsule_runner::config::Connection::from_source(&source).unwrap();
    let config = capsule_runner::config::RunnerConfig::from_source(&source).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    capsule_runner::serve(connection, config, stop).await.unwrap();
}

/// A runner in a process of its own, registered as `name`: its id, the
/// process and its working directory.
async fn runner(mesh: &TestMesh, name: &str) -> (String, Child, tempfile::TempDir) {
    let (id, token) = mesh.runner(name).await;
    let workdir = tempfile::tempdir().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "runner_process", "--ignored", "--nocapture"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "CAPSULE_TEST_RUNNER_URL",
            format!("http://{}", mesh.addr(ServiceKind::Deploy)),
        )
        .env("CAPSULE_RUNNER_TOKEN", token)
        .env("DEPLOY_RUNNER_WORKDIR", workdir.path())
        .env("DEPLOY_RUNNER_HEARTBEAT_MS", "200")
        .env("DEPLOY_START_TIMEOUT_SECS", "20")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (id, child, workdir)
}

/// Waits (up to `within`) until the deployment's log holds `count` lines
/// with `marker`.
async fn until_logged(mesh: &TestMesh, token: &str, id: &str, marker: &str, count: usize, within: Duration) {
    let started = Instant::now();
    loop {
        let all = text(&logs(mesh, token, id).await);
        if all.matches(marker).count() >= count {
            return;
        }
        assert!(started.elapsed() < within, "not {count} × {marker:?} in:\n{all}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_two_runners_survive_one_runner_killed() {
    let mesh = common::start_with(common::Options {
        deploy: vec![("DEPLOY_LEASE_SECS", "3")],
        ..Default::default()
    })
    .await;
    let mut runners = vec![runner(&mesh, "eu-1").await, runner(&mesh, "eu-2").await];
    let (ada, _) = mesh.user("ada@example.com").await;
    let id = app(
        &mesh,
        &ada,
        "echo served > index.html",
        "exec python3 -m http.server \"$PORT\"",
        &[],
    )
    .await;
    let settings = project_pb::ProjectSettings {
        project_id: id.clone(),
        resources: Some(project_pb::Resources {
            replicas: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    update_settings(&mesh, &ada, settings, &["resources.replicas"]).await;
    let live = deploy_live(&mesh, &ada, &id).await;
    // The builder's copy, and one on the other runner from the release
    // the builder left with the deploy service.
    until_logged(
        &mesh,
        &ada,
        &live.id,
        "replica serving on runner",
        1,
        Duration::from_secs(40),
    )
    .await;
    let output = text(&logs(&mesh, &ada, &live.id).await);
    assert!(
        output.contains("kept on this runner and the deploy service"),
        "{output}"
    );
    assert!(output.contains("fetched from the deploy service"), "{output}");
    let host = host_label(&mesh, &ada, &id).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(&client, &mesh, &host, "/").await != Ok((200, "served\n".to_owned())) {
        assert!(Instant::now() < deadline, "not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A spare runner, then the builder killed while a client fetches
    // every 20 ms.
    runners.push(runner(&mesh, "eu-3").await);
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let fetcher = {
        let (stop, served, failed, client, host) = (
            stop.clone(),
            served.clone(),
            failed.clone(),
            client.clone(),
            host.clone(),
        );
        let http = mesh.http;
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .get(format!("http://{http}/"))
                    .header("host", format!("{host}.localhost:{}", http.port()))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{other:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let builder = mesh
        .deploys()
        .await
        .get_deployment(common::authed(
            capsule::proto::deploy::v1::GetDeploymentRequest {
                deployment_id: live.id.clone(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner()
        .runner_id;
    let before = served.load(Ordering::Relaxed);
    let (_, killed, _) = runners.iter_mut().find(|(id, ..)| *id == builder).unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let killed_at = Instant::now();
    // A replacement on the spare runner within the lease time (3 s) and
    // the start of a copy.
    until_logged(
        &mesh,
        &ada,
        &live.id,
        "replica serving on runner",
        2,
        Duration::from_secs(20),
    )
    .await;
    let replaced_in = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = fetcher.await.unwrap();
    eprintln!(
        "served {} ({} after the kill), failed {}, replaced in {replaced_in:?}",
        served.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed) - before,
        failed.load(Ordering::Relaxed)
    );
    assert!(served.load(Ordering::Relaxed) > before, "served on after the kill");
    // A request the killed copy had already received may be lost with
    // it (at most one: the client has one request in flight); none that
    // never reached it.
    assert!(failed.load(Ordering::Relaxed) <= 1, "{failures:?}");
    assert!(replaced_in < Duration::from_secs(15), "replaced in {replaced_in:?}");
    for (_, mut child, _) in runners {
        let _ = child.kill();
        let _ = child.wait();
    }
}
