//! Process types beside the web process, end to end: workers restarted
//! when they exit, with their own lines; the settings that declare them.

mod common;

use std::time::{Duration, Instant};

use capsule::proto::{deploy::v1 as pb, project::v1 as project_pb};
use common::{
    TestMesh, authed,
    deploy::{app, deploy_live, fetch, host_label, logs, until_served, update_settings},
};

const SITE: &str = "exec python3 -m http.server \"$PORT\"";

async fn mesh() -> TestMesh {
    common::start_with(common::Options {
        local_runner: true,
        deploy: vec![("DEPLOY_DRAIN_SECS", "1"), ("DEPLOY_START_TIMEOUT_SECS", "20")],
        ..Default::default()
    })
    .await
}

type Processes = std::collections::HashMap<String, project_pb::ProcessType>;

fn process(name: &str, command: &str, schedule: &str, time_zone: &str) -> (String, project_pb::ProcessType) {
    let process = project_pb::ProcessType {
        command: command.to_owned(),
        schedule: schedule.to_owned(),
        time_zone: time_zone.to_owned(),
    };
    (name.to_owned(), process)
}

async fn set_process_types(mesh: &TestMesh, token: &str, id: &str, processes: Vec<(String, project_pb::ProcessType)>) {
    let settings = project_pb::ProjectSettings {
        project_id: id.to_owned(),
        process_types: processes.into_iter().collect(),
        ..Default::default()
    };
    update_settings(mesh, token, settings, &["process_types"]).await;
}

/// Waits (up to 30 s) until `enough` holds of the deployment's lines.
async fn lines_until(
    mesh: &TestMesh,
    token: &str,
    id: &str,
    enough: impl Fn(&[pb::LogLine]) -> bool,
) -> Vec<pb::LogLine> {
    let started = Instant::now();
    loop {
        let lines = logs(mesh, token, id).await;
        if enough(&lines) {
            return lines;
        }
        let all: Vec<String> = lines.iter().map(|l| format!("[{}] {}", l.process, l.text)).collect();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not yet:\n{}",
            all.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The project's runs, newest first.
async fn runs_of(mesh: &TestMesh, token: &str, project_id: &str) -> Vec<pb::Run> {
    let request = pb::ListRunsRequest {
        project_id: project_id.to_owned(),
        page_size: 100,
    };
    mesh.deploys()
        .await
        .list_runs(authed(request, token))
        .await
        .expect("ListRuns answers the project's owner")
        .into_inner()
        .runs
}

fn of<'a>(lines: &'a [pb::LogLine], process: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|line| line.process == process)
        .map(|line| line.text.as_str())
        .collect()
}

/// A worker from the settings and one from the Procfile run beside the
/// web process; one that exits is started again, and each one's lines are
/// marked with its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_beside_the_app_and_are_restarted_when_they_exit() {
    let mesh = mesh().await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let build = "printf 'beat: echo beat from the procfile; exec sleep 600\\n' > Procfile";
    let id = app(&mesh, &ada, build, SITE, &[]).await;
    set_process_types(&mesh, &ada, &id, vec![process("ticker", "echo tick; exit 3", "", "")]).await;
    let live = deploy_live(&mesh, &ada, &id).await;

    let lines = lines_until(&mesh, &ada, &live.id, |lines| {
        of(lines, "ticker").iter().filter(|text| **text == "tick").count() >= 2
            && of(lines, "beat").contains(&"beat from the procfile")
    })
    .await;
    let ticker = of(&lines, "ticker");
    assert!(
        ticker.contains(&"worker ticker exited with code 3; restarting in 1 s"),
        "{ticker:?}"
    );
    assert!(
        !of(&lines, "").iter().any(|text| text.contains("tick")),
        "a worker's lines are its own"
    );
    let deployment = mesh
        .deploys()
        .await
        .get_deployment(authed(
            pb::GetDeploymentRequest {
                deployment_id: live.id.clone(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deployment.state(),
        pb::DeploymentState::Live,
        "a worker never takes the app down"
    );
    mesh.stop().await;
}

/// Bad process types are refused with a field violation naming each, and
/// nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_types_are_checked_and_a_mistake_stores_nothing() {
    let mesh = common::start().await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let id = app(&mesh, &ada, "", SITE, &[]).await;
    let good = vec![
        process("worker", "node jobs.js", "", ""),
        process("nightly", "node report.js", "0 3 * * *", "Europe/Paris"),
        process("night-shift", "node shift.js", "0 22-2 * * FRI-MON", ""),
    ];
    set_process_types(&mesh, &ada, &id, good.clone()).await;
    let mut projects = mesh.projects().await;
    let mut refuse = async |processes: Vec<(String, project_pb::ProcessType)>| {
        let refused = projects
            .update_project_settings(authed(
                project_pb::UpdateProjectSettingsRequest {
                    settings: Some(project_pb::ProjectSettings {
                        project_id: id.clone(),
                        process_types: processes.into_iter().collect(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["process_types".into()],
                    }),
                },
                &ada,
            ))
            .await
            .unwrap_err();
        common::violated_fields(&refused)
    };
    // The rules in the proto, before the handler.
    let mut refused = refuse(vec![
        process("web", "node web.js", "", ""),
        process("release", "node migrate.js", "", ""),
        process("Bad_Name", "f", "", ""),
        process("empty", "", "", ""),
        process("late", "c", "0 25 * * *", ""),
    ])
    .await;
    refused.sort();
    assert_eq!(
        refused,
        [
            "settings.process_types[\"Bad_Name\"]",
            "settings.process_types[\"empty\"].command",
            "settings.process_types[\"late\"].schedule",
            "settings.process_types[\"release\"]",
            "settings.process_types[\"web\"]",
        ]
    );
    // What no rule can say.
    assert_eq!(
        refuse(vec![
            process("lost", "d", "0 3 * * *", "Mars/Olympus"),
            process("zoned", "e", "", "Mars/Olympus"),
        ])
        .await,
        [
            "settings.process_types[\"lost\"].time_zone",
            "settings.process_types[\"zoned\"].time_zone",
        ]
    );
    let mut projects = mesh.projects().await;
    let settings = projects
        .get_project_settings(authed(
            project_pb::GetProjectSettingsRequest { project_id: id.clone() },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        settings.process_types,
        good.into_iter().collect::<Processes>(),
        "nothing stored"
    );
    mesh.stop().await;
}

async fn run_command(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
    command: &str,
    time_limit_seconds: u32,
) -> Result<(Vec<pb::Run>, Vec<pb::LogLine>), tonic::Status> {
    use tokio_stream::StreamExt;
    let mut stream = mesh
        .deploys()
        .await
        .run_command(authed(
            pb::RunCommandRequest {
                project_id: project_id.to_owned(),
                environment: String::new(),
                command: command.to_owned(),
                time_limit_seconds,
            },
            token,
        ))
        .await?
        .into_inner();
    let (mut runs, mut lines) = (Vec::new(), Vec::new());
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("the run ends within 60 s")
    {
        match event?.event {
            Some(pb::run_command_response::Event::Run(run)) => runs.push(run),
            Some(pb::run_command_response::Event::Line(line)) => lines.push(line),
            None => {}
        }
    }
    Ok((runs, lines))
}

/// A one-off command runs from the live release with the project's
/// variables, in a sandbox of its own: its output and its exit code are
/// streamed, its lines are marked as its own, the audit trail records it;
/// one past its time limit is stopped; without a live release it is
/// refused saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_command_streams_its_output_and_exit_code() {
    let mesh = mesh().await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let id = app(
        &mesh,
        &ada,
        "echo built > marker",
        SITE,
        &[("GREETING", "hello", false)],
    )
    .await;

    let refused = run_command(&mesh, &ada, &id, "true", 0).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("deploy it first"), "{refused:?}");

    let live = deploy_live(&mesh, &ada, &id).await;
    let (runs, lines) = run_command(&mesh, &ada, &id, "cat marker; echo \"$GREETING from a run\"; exit 7", 0)
        .await
        .unwrap();
    assert_eq!(runs.len(), 2, "queued, then ended: {runs:?}");
    assert_eq!(runs[0].state(), pb::RunState::Queued);
    let ended = &runs[1];
    assert_eq!(ended.state(), pb::RunState::Failed, "{ended:?}");
    assert_eq!(ended.exit_code, Some(7));
    assert_eq!(ended.deployment_id, live.id);
    let texts: Vec<&str> = lines.iter().map(|line| line.text.as_str()).collect();
    assert!(
        texts.contains(&"built") && texts.contains(&"hello from a run"),
        "{texts:?}"
    );
    let process = format!("run.{}", ended.id);
    assert!(lines.iter().all(|line| line.process == process), "{lines:?}");

    // Through the REST bridge, as Server-Sent Events.
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/projects/{id}/runs", mesh.http))
        .bearer_auth(&ada)
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(r#"{"command": "echo over sse"}"#)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = response.text().await.unwrap();
    assert!(events.contains("data: ") && events.contains("over sse"), "{events}");
    assert!(
        events.contains("RUN_STATE_SUCCEEDED") && events.contains("\"exitCode\":0"),
        "{events}"
    );

    let (runs, _) = run_command(&mesh, &ada, &id, "sleep 30", 1).await.unwrap();
    let stopped = runs.last().unwrap();
    assert_eq!(stopped.state(), pb::RunState::Failed);
    assert!(stopped.status_message.contains("time limit of 1 s"), "{stopped:?}");

    // Another user may not run anything in it.
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let denied = run_command(&mesh, &mallory, &id, "id", 0).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::NotFound, "{denied:?}");

    let listed = runs_of(&mesh, &ada, &id).await;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2].exit_code, Some(7), "newest first");
    assert_eq!(listed[1].command, "echo over sse");
    let trail = mesh
        .deploys()
        .await
        .list_audit_events(authed(
            capsule::proto::audit::v1::ListAuditEventsRequest {
                project_id: id.clone(),
                ..Default::default()
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let runs: Vec<&str> = trail
        .iter()
        .filter(|event| event.action == "run.create")
        .map(|event| event.details["command"].as_str())
        .collect();
    assert_eq!(
        runs,
        [
            "sleep 30",
            "echo over sse",
            "cat marker; echo \"$GREETING from a run\"; exit 7"
        ]
    );

    // A tenant that piles up runs: three at most queued or running.
    let mut deploys = mesh.deploys().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let request = pb::RunCommandRequest {
            project_id: id.clone(),
            command: "sleep 3".to_owned(),
            ..Default::default()
        };
        held.push(deploys.run_command(authed(request, &ada)).await.unwrap().into_inner());
    }
    let piled = run_command(&mesh, &ada, &id, "sleep 3", 0).await.unwrap_err();
    assert_eq!(piled.code(), tonic::Code::ResourceExhausted, "{piled:?}");
    assert!(piled.message().contains("DEPLOY_MAX_RUNS_PER_PROJECT"), "{piled:?}");
    mesh.stop().await;
}

/// A cron entry every 2 s runs twice from the live release, each run with
/// its own exit status; an entry whose run outlasts its period is never
/// run twice at once, and the due times it misses are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_entries_run_on_schedule_and_never_overlap() {
    let mesh = mesh().await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let id = app(&mesh, &ada, "", SITE, &[]).await;
    set_process_types(
        &mesh,
        &ada,
        &id,
        vec![
            process("tick", "echo tick; exit 0", "*/2 * * * * *", "Europe/Paris"),
            process("slow", "sleep 5", "* * * * * *", ""),
        ],
    )
    .await;
    let live = deploy_live(&mesh, &ada, &id).await;
    let started = Instant::now();
    let runs = loop {
        let runs = runs_of(&mesh, &ada, &id).await;
        let ended = |name: &str| {
            runs.iter()
                .filter(|run| run.name == name && run.state() == pb::RunState::Succeeded)
                .count()
        };
        if ended("tick") >= 2 && ended("slow") >= 2 {
            break runs;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "not yet: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for run in &runs {
        assert_eq!(run.kind(), pb::RunKind::Cron);
        assert_eq!(run.deployment_id, live.id);
        assert!(run.scheduled_time.is_some());
    }
    let tick = runs
        .iter()
        .find(|run| run.name == "tick" && run.state() == pb::RunState::Succeeded)
        .unwrap();
    assert_eq!(tick.exit_code, Some(0));
    // The slow entry's runs never overlap.
    let mut slow: Vec<(i64, i64)> = runs
        .iter()
        .filter(|run| run.name == "slow" && run.state() == pb::RunState::Succeeded)
        .map(|run| (run.start_time.unwrap().seconds, run.end_time.unwrap().seconds))
        .collect();
    slow.sort_unstable();
    for pair in slow.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "overlapping runs: {slow:?}");
    }
    let lines = logs(&mesh, &ada, &live.id).await;
    assert!(
        lines
            .iter()
            .any(|line| line.text.contains("cron slow: the run due at") && line.text.contains("is skipped")),
        "skips are said"
    );
    let skips = lines
        .iter()
        .filter(|line| line.text.contains("cron slow: the run due at"))
        .count();
    let slow_runs = runs.iter().filter(|run| run.name == "slow").count();
    assert!(
        skips <= slow_runs + 1,
        "once per run that outlasts its period: {skips} for {slow_runs}"
    );
    assert!(
        of(&lines, &format!("run.{}", tick.id)).contains(&"tick"),
        "a run's lines are its own"
    );
    mesh.stop().await;
}

/// Scale to zero: an app with no request for its idle timeout is stopped
/// (its workers keep running); the next requests are held while it starts
/// again from the same release, and every one of them is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_app_is_stopped_and_the_next_request_starts_it_again() {
    let mesh = mesh().await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let id = app(&mesh, &ada, "echo awake > index.html", SITE, &[]).await;
    let settings = project_pb::ProjectSettings {
        project_id: id.clone(),
        idle_timeout_seconds: 2,
        process_types: [process("keeper", "echo keeping; exec sleep 600", "", "")].into(),
        ..Default::default()
    };
    update_settings(&mesh, &ada, settings, &["idle_timeout_seconds", "process_types"]).await;
    let live = deploy_live(&mesh, &ada, &id).await;
    let host = host_label(&mesh, &ada, &id).await;
    let client = reqwest::Client::new();
    until_served(&client, &mesh, &host).await;
    assert_eq!(
        fetch(&client, &mesh, &host, "/").await.unwrap(),
        (200, "awake\n".to_owned())
    );

    let stopped = "no request for 2 s: the app is stopped until the next one";
    lines_until(&mesh, &ada, &live.id, |lines| {
        lines.iter().any(|line| line.text == stopped)
    })
    .await;
    // Stopped for good: nothing restarts it by itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lines = logs(&mesh, &ada, &live.id).await;
    assert!(
        !lines.iter().any(|line| line.text.starts_with("a request came")),
        "started again without a request"
    );
    assert!(
        !lines.iter().any(|line| line.text.starts_with("the app exited")),
        "a stop is no crash"
    );

    // Five requests at once: each held, then answered by the fresh process.
    let answers = futures::future::join_all((0..5).map(|_| fetch(&client, &mesh, &host, "/"))).await;
    for answer in answers {
        assert_eq!(answer.unwrap(), (200, "awake\n".to_owned()));
    }
    let lines = lines_until(&mesh, &ada, &live.id, |lines| {
        lines.iter().any(|line| {
            line.text
                .starts_with("a request came: the app started again and answered in")
        })
    })
    .await;
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.text.starts_with("a request came"))
            .count(),
        1,
        "one start for the held requests"
    );
    assert_eq!(
        of(&lines, "keeper").iter().filter(|text| **text == "keeping").count(),
        1,
        "the worker kept running"
    );
    let deployments = common::deploy::deployments(&mesh, &ada, &id).await;
    assert_eq!(deployments.len(), 1, "no deployment made");
    assert_eq!(deployments[0].state(), pb::DeploymentState::Live);
    mesh.stop().await;
}
