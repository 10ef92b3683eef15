//! Deployments that really run, runners, and logs that stream: the mesh in
//! process, real PostgreSQL, real processes.

mod common;

use std::time::{Duration, Instant};

use capsule::proto::deploy::v1::{self as pb, DeploymentState};
use common::{
    authed,
    deploy::{deploy, logs, project, text, wait_for},
    violated_fields,
};
use tonic::Code;

/// A runner-API request with a registered runner's token.
fn runner_request<T>(token: &str, message: T) -> tonic::Request<T> {
    authed(message, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_goes_live_and_the_next_one_supersedes_it() {
    let mesh = common::start_with(common::Options {
        local_runner: true,
        ..Default::default()
    })
    .await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "echo hello; echo oops >&2", &[]).await;

    let first = deploy(&mesh, &alice, &project_id).await;
    assert_eq!(first.state, DeploymentState::Queued as i32);
    let live = wait_for(&mesh, &alice, &first.id, DeploymentState::Live, Duration::from_secs(20)).await;
    assert!(live.finish_time.is_some());
    let lines = logs(&mesh, &alice, &first.id).await;
    assert!(
        lines
            .iter()
            .any(|l| l.text == "hello" && l.stream == pb::LogStream::Stdout as i32),
        "{}",
        text(&lines)
    );
    assert!(
        lines
            .iter()
            .any(|l| l.text == "oops" && l.stream == pb::LogStream::Stderr as i32),
        "{}",
        text(&lines)
    );
    let sequences: Vec<i64> = lines.iter().map(|l| l.sequence).collect();
    assert_eq!(
        sequences,
        (1..=i64::try_from(lines.len()).unwrap()).collect::<Vec<_>>(),
        "gapless"
    );

    let second = deploy(&mesh, &alice, &project_id).await;
    wait_for(
        &mesh,
        &alice,
        &second.id,
        DeploymentState::Live,
        Duration::from_secs(20),
    )
    .await;
    wait_for(
        &mesh,
        &alice,
        &first.id,
        DeploymentState::Superseded,
        Duration::from_secs(1),
    )
    .await;

    // Rollback: a new deployment from the first one's snapshot.
    let rollback = mesh
        .deploys()
        .await
        .rollback_deployment(authed(
            pb::RollbackDeploymentRequest {
                deployment_id: first.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rollback.rollback_of, first.id);
    wait_for(
        &mesh,
        &alice,
        &rollback.id,
        DeploymentState::Live,
        Duration::from_secs(20),
    )
    .await;
    wait_for(
        &mesh,
        &alice,
        &second.id,
        DeploymentState::Superseded,
        Duration::from_secs(1),
    )
    .await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_is_failed_with_its_exit_code_and_secrets_are_masked() {
    let mesh = common::start_with(common::Options {
        local_runner: true,
        ..Default::default()
    })
    .await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(
        &mesh,
        &alice,
        "echo \"key is $API_KEY, url is $PUBLIC_URL\"; exit 3",
        &[
            ("API_KEY", "sk-live-0123456789", true),
            ("PUBLIC_URL", "https://example.com", false),
        ],
    )
    .await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    let failed = wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Failed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(failed.exit_code, Some(3));
    let lines = logs(&mesh, &alice, &deployment.id).await;
    let all = text(&lines);
    assert!(all.contains("exit code 3"), "{all}");
    assert!(all.contains("key is ********, url is https://example.com"), "{all}");
    assert!(!all.contains("sk-live-0123456789"));
    assert!(!format!("{failed:?}").contains("sk-live-0123456789"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_build_within_a_second() {
    let mesh = common::start_with(common::Options {
        local_runner: true,
        ..Default::default()
    })
    .await;
    let (alice, _) = mesh.user("alice@example.com").await;
    // A background sleep, and one that leaves the process group and session.
    let project_id = project(
        &mesh,
        &alice,
        "sleep 30 & setsid sleep 31 & echo \"uid=$(id -u)\"; wait",
        &[],
    )
    .await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    let started = Instant::now();
    let uid: u32 = loop {
        let all = text(&logs(&mesh, &alice, &deployment.id).await);
        if let Some(uid) = all.lines().find_map(|line| line.strip_prefix("uid=")) {
            break uid.parse().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the build never started: {all}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(uid, 0, "builds never run as root");
    let running = || common::processes_of(uid);
    while running() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "the sleeps never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let canceled_at = Instant::now();
    let canceled = mesh
        .deploys()
        .await
        .cancel_deployment(authed(
            pb::CancelDeploymentRequest {
                deployment_id: deployment.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled.state, DeploymentState::Canceled as i32);
    while running() > 0 {
        assert!(
            canceled_at.elapsed() < Duration::from_secs(1),
            "the build (or its setsid child) still runs after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = mesh
        .deploys()
        .await
        .cancel_deployment(authed(
            pb::CancelDeploymentRequest {
                deployment_id: deployment.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        Code::FailedPrecondition,
        "a canceled deployment cannot be canceled again"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_logs_follows_live_resumes_without_gaps_and_ends_at_the_final_state() {
    let mesh = common::start().await;
    let (_, test_runner) = mesh.runner("test-runner").await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "true", &[]).await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    let mut runner = mesh.deploys().await;
    let claimed = runner
        .claim_deployment(runner_request(
            &test_runner,
            pb::ClaimDeploymentRequest {
                runner_id: String::new(),
                lease: None,
                wait: None,
                fresh: false,
                no_runs: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claimed.deployment.unwrap().id, deployment.id);

    let mut stream = mesh
        .deploys()
        .await
        .stream_logs(authed(
            pb::StreamLogsRequest {
                deployment_id: deployment.id.clone(),
                after_sequence: 0,
                follow: true,
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    // The backlog: "queued" and the claim.
    let mut received = Vec::new();
    for _ in 0..2 {
        received.push(stream.message().await.unwrap().unwrap());
    }

    let mut latencies = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        runner
            .append_logs(runner_request(
                &test_runner,
                pb::AppendLogsRequest {
                    deployment_id: deployment.id.clone(),
                    runner_id: String::new(),
                    entries: vec![pb::LogEntry {
                        stream: pb::LogStream::Stdout as i32,
                        text: format!("line {i}"),
                        process: String::new(),
                    }],
                },
            ))
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(2), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        latencies.push(sent.elapsed());
        assert_eq!(line.text, format!("line {i}"));
        received.push(line);
    }
    latencies.sort();
    assert!(
        latencies[latencies.len() - 1] < Duration::from_millis(100),
        "{latencies:?}"
    );

    for state in [DeploymentState::Deploying, DeploymentState::Live] {
        runner
            .report_status(runner_request(
                &test_runner,
                pb::ReportStatusRequest {
                    deployment_id: deployment.id.clone(),
                    runner_id: String::new(),
                    state: state as i32,
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    // The state changes' own lines; the stream stays open while live, for
    // the app's own output, which comes as the runtime phase.
    for _ in 0..2 {
        received.push(stream.message().await.unwrap().unwrap());
    }
    assert!(received.last().unwrap().text.contains("live"));
    assert_eq!(received.last().unwrap().phase, pb::LogPhase::Build as i32);
    runner
        .append_logs(runner_request(
            &test_runner,
            pb::AppendLogsRequest {
                deployment_id: deployment.id.clone(),
                entries: vec![pb::LogEntry {
                    stream: pb::LogStream::Stderr as i32,
                    text: "GET / 200".into(),
                    process: String::new(),
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let runtime = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (runtime.text.as_str(), runtime.phase),
        ("GET / 200", pb::LogPhase::Runtime as i32)
    );
    received.push(runtime);
    // It ends when the deployment does.
    runner
        .report_status(runner_request(
            &test_runner,
            pb::ReportStatusRequest {
                deployment_id: deployment.id.clone(),
                state: DeploymentState::Crashed as i32,
                status_message: "exited".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = stream.message().await.unwrap() {
            received.push(line);
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ends when the deployment crashes");
    let sequences: Vec<i64> = received.iter().map(|l| l.sequence).collect();
    assert_eq!(
        sequences,
        (1..=i64::try_from(received.len()).unwrap()).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert!(received.last().unwrap().text.contains("crashed"));

    // Resume after a sequence number.
    let mut resumed = mesh
        .deploys()
        .await
        .stream_logs(authed(
            pb::StreamLogsRequest {
                deployment_id: deployment.id.clone(),
                after_sequence: 10,
                follow: true,
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut rest = Vec::new();
    while let Some(line) = resumed.message().await.unwrap() {
        rest.push(line.sequence);
    }
    assert_eq!(rest, (11..=i64::try_from(received.len()).unwrap()).collect::<Vec<_>>());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_never_share_a_claim_and_a_silent_runner_loses_it() {
    let mesh = common::start().await;
    let (_, runner_a) = mesh.runner("runner-a").await;
    let (_, runner_b) = mesh.runner("runner-b").await;
    let runner_b_again = runner_b.clone();
    let (silent_id, silent) = mesh.runner("silent").await;
    let (_, rescuer) = mesh.runner("rescuer").await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let mut queued = Vec::new();
    let mut projects = Vec::new();
    for _ in 0..6 {
        let project_id = project(&mesh, &alice, "true", &[]).await;
        for _ in 0..2 {
            queued.push(deploy(&mesh, &alice, &project_id).await.id);
        }
        projects.push(project_id);
    }
    let claim_all = |token: String| {
        let client = mesh.deploys();
        async move {
            let mut client = client.await;
            let mut mine = Vec::new();
            loop {
                let claimed = client
                    .claim_deployment(runner_request(
                        &token,
                        pb::ClaimDeploymentRequest {
                            runner_id: String::new(),
                            lease: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                            wait: None,
                            fresh: false,
                            no_runs: false,
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                match claimed.deployment {
                    Some(deployment) => mine.push(deployment.id),
                    None => return mine,
                }
            }
        }
    };
    let (a, b) = tokio::join!(claim_all(runner_a), claim_all(runner_b));
    assert!(a.iter().all(|id| !b.contains(id)), "no deployment claimed twice");
    let mut all: Vec<String> = a.into_iter().chain(b).collect();
    all.sort();
    queued.sort();
    assert_eq!(all, queued);

    // DEPLOY_MAX_BUILDS_PER_PROJECT (2): a project's third waits while two
    // of its deployments are being built.
    let third = deploy(&mesh, &alice, &projects[0]).await;
    let waits = claim_all(runner_b_again).await;
    assert!(waits.is_empty(), "a third build of one project was claimed: {waits:?}");
    mesh.deploys()
        .await
        .cancel_deployment(authed(
            pb::CancelDeploymentRequest {
                deployment_id: third.id,
            },
            &alice,
        ))
        .await
        .unwrap();

    // A lease that runs out: another runner takes over and finishes.
    let project_id = project(&mesh, &alice, "true", &[]).await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    let mut client = mesh.deploys().await;
    let first = client
        .claim_deployment(runner_request(
            &silent,
            pb::ClaimDeploymentRequest {
                runner_id: String::new(),
                lease: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                wait: None,
                fresh: false,
                no_runs: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.deployment.unwrap().id, deployment.id);
    let nothing = client
        .claim_deployment(runner_request(
            &rescuer,
            pb::ClaimDeploymentRequest {
                runner_id: String::new(),
                lease: None,
                wait: None,
                fresh: false,
                no_runs: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(nothing.deployment.is_none(), "the lease still holds");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rescued = client
        .claim_deployment(runner_request(
            &rescuer,
            pb::ClaimDeploymentRequest {
                runner_id: String::new(),
                lease: None,
                wait: None,
                fresh: false,
                no_runs: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rescued.deployment.unwrap().id, deployment.id);
    let late = client
        .report_status(runner_request(
            &silent,
            pb::ReportStatusRequest {
                deployment_id: deployment.id.clone(),
                runner_id: String::new(),
                state: DeploymentState::Deploying as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::PermissionDenied, "another runner holds it now");
    let heartbeat = client
        .heartbeat(runner_request(
            &silent,
            pb::HeartbeatRequest {
                deployment_id: deployment.id.clone(),
                runner_id: String::new(),
                release: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(heartbeat.code(), Code::PermissionDenied);
    for state in [DeploymentState::Deploying, DeploymentState::Live] {
        client
            .report_status(runner_request(
                &rescuer,
                pb::ReportStatusRequest {
                    deployment_id: deployment.id.clone(),
                    runner_id: String::new(),
                    state: state as i32,
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let illegal = client
        .report_status(runner_request(
            &rescuer,
            pb::ReportStatusRequest {
                deployment_id: deployment.id.clone(),
                runner_id: String::new(),
                state: DeploymentState::Deploying as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(illegal.code(), Code::FailedPrecondition);
    let all = text(&logs(&mesh, &alice, &deployment.id).await);
    assert!(
        all.contains(&format!("runner {silent_id} stopped renewing its lease")),
        "{all}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_and_strangers_get_nothing_and_bad_input_is_named() {
    let mesh = common::start().await;
    let (_, r) = mesh.runner("r").await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let (bob, _) = mesh.user("bob@example.com").await;
    let project_id = project(&mesh, &alice, "true", &[("TOKEN", "t0ps3cret-value", true)]).await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    let mut client = mesh.deploys().await;

    let deploy_other = client
        .create_deployment(authed(
            pb::CreateDeploymentRequest {
                project_id: project_id.clone(),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(deploy_other.code(), Code::NotFound);
    let get = client
        .get_deployment(authed(
            pb::GetDeploymentRequest {
                deployment_id: deployment.id.clone(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let list = client
        .list_deployments(authed(
            pb::ListDeploymentsRequest {
                project_id: project_id.clone(),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(list.code(), Code::NotFound);
    let cancel = client
        .cancel_deployment(authed(
            pb::CancelDeploymentRequest {
                deployment_id: deployment.id.clone(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound);
    let logs = client
        .get_logs(authed(
            pb::GetLogsRequest {
                deployment_id: deployment.id.clone(),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(logs.code(), Code::NotFound);

    let anonymous = client
        .get_deployment(pb::GetDeploymentRequest {
            deployment_id: deployment.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let user_as_runner = client
        .claim_deployment(authed(
            pb::ClaimDeploymentRequest {
                runner_id: "me".into(),
                lease: None,
                wait: None,
                fresh: false,
                no_runs: false,
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        user_as_runner.code(),
        Code::Unauthenticated,
        "a user token is not a runner token"
    );

    let unknown_state = client
        .list_deployments(authed(
            pb::ListDeploymentsRequest {
                project_id: project_id.clone(),
                state: 99,
                page_size: 1000,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unknown_state), ["page_size", "state"]);
    let bad = client
        .create_deployment(authed(
            pb::CreateDeploymentRequest {
                project_id: "nope".into(),
                source_ref: "a\nb".into(),
                environment: "Prod Env".into(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["project_id", "source_ref", "environment"]);

    let listed = client
        .list_deployments(authed(
            pb::ListDeploymentsRequest {
                project_id: project_id.clone(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.deployments.len(), 1);
    assert!(!format!("{listed:?}").contains("t0ps3cret-value"));

    // Only the runner holding the claim gets the secret, to run the build.
    let claimed = client
        .claim_deployment(runner_request(
            &r,
            pb::ClaimDeploymentRequest {
                runner_id: String::new(),
                lease: None,
                wait: None,
                fresh: false,
                no_runs: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claimed.snapshot.unwrap().environment["TOKEN"], "t0ps3cret-value");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_takes_a_deployment_queued_meanwhile_and_an_empty_one_ends_with_its_wait() {
    let mesh = common::start().await;
    let (_, test_runner) = mesh.runner("test-runner").await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "true", &[]).await;
    let claim = |wait: i64| {
        runner_request(
            &test_runner,
            pb::ClaimDeploymentRequest {
                runner_id: String::new(),
                lease: None,
                wait: Some(prost_types::Duration {
                    seconds: wait,
                    nanos: 0,
                }),
                fresh: false,
                no_runs: false,
            },
        )
    };

    let asked = Instant::now();
    let empty = mesh
        .deploys()
        .await
        .claim_deployment(claim(1))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.deployment.is_none());
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "an empty claim waits out its wait"
    );

    let (mut runner, request) = (mesh.deploys().await, claim(30));
    let waiting = tokio::spawn(async move { runner.claim_deployment(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    let queued = Instant::now();
    let claimed = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(claimed.deployment.unwrap().id, deployment.id);
    // Woken by the queueing, not found by the service's retry every 2 s.
    assert!(
        queued.elapsed() < Duration::from_millis(1500),
        "the waiting claim was not woken: {:?}",
        queued.elapsed()
    );

    let refused = mesh
        .deploys()
        .await
        .claim_deployment(runner_request(
            &test_runner,
            pb::ClaimDeploymentRequest {
                runner_id: String::new(),
                lease: None,
                wait: Some(prost_types::Duration { seconds: 61, nanos: 0 }),
                fresh: false,
                no_runs: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    mesh.stop().await;
}
