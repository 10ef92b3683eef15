//! Helpers for tests that deploy: projects with settings, deployments,
//! waiting for a state, reading logs.

use std::time::{Duration, Instant};

use capsule::proto::{
    deploy::v1::{self as pb, DeploymentState},
    project::v1 as project_pb,
};

use super::{TestMesh, authed};

/// A project of `token`'s user with these settings and variables.
pub async fn project(mesh: &TestMesh, token: &str, build: &str, variables: &[(&str, &str, bool)]) -> String {
    app(mesh, token, build, "", variables).await
}

/// A project with a build and a start command.
pub async fn app(mesh: &TestMesh, token: &str, build: &str, start: &str, variables: &[(&str, &str, bool)]) -> String {
    let mut projects = mesh.projects().await;
    let project = projects
        .create_project(authed(
            project_pb::CreateProjectRequest {
                project: Some(project_pb::Project {
                    name: format!("app {}", uuid::Uuid::new_v4()),
                    ..Default::default()
                }),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    projects
        .update_project_settings(authed(
            project_pb::UpdateProjectSettingsRequest {
                settings: Some(project_pb::ProjectSettings {
                    project_id: project.id.clone(),
                    build_command: build.to_owned(),
                    start_command: start.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["build_command".into(), "start_command".into()],
                }),
            },
            token,
        ))
        .await
        .unwrap();
    for (name, value, secret) in variables {
        set_variable(mesh, token, &project.id, name, value, *secret).await;
    }
    project.id
}

/// Sets (or replaces) a project's variable.
pub async fn set_variable(mesh: &TestMesh, token: &str, project_id: &str, name: &str, value: &str, secret: bool) {
    mesh.projects()
        .await
        .set_environment_variable(authed(
            project_pb::SetEnvironmentVariableRequest {
                project_id: project_id.to_owned(),
                variable: Some(project_pb::EnvironmentVariable {
                    name: name.to_owned(),
                    value: value.to_owned(),
                    secret,
                    update_time: None,
                }),
            },
            token,
        ))
        .await
        .unwrap();
}

pub async fn deploy(mesh: &TestMesh, token: &str, project_id: &str) -> pb::Deployment {
    mesh.deploys()
        .await
        .create_deployment(authed(
            pb::CreateDeploymentRequest {
                project_id: project_id.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the deployment is in `state`.
pub async fn wait_for(
    mesh: &TestMesh,
    token: &str,
    id: &str,
    state: DeploymentState,
    within: Duration,
) -> pb::Deployment {
    let mut client = mesh.deploys().await;
    let deadline = Instant::now() + within;
    loop {
        let deployment = client
            .get_deployment(authed(
                pb::GetDeploymentRequest {
                    deployment_id: id.to_owned(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        if deployment.state == state as i32 {
            return deployment;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id} is {:?}, not {state:?}",
            DeploymentState::try_from(deployment.state)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn logs(mesh: &TestMesh, token: &str, id: &str) -> Vec<pb::LogLine> {
    mesh.deploys()
        .await
        .get_logs(authed(
            pb::GetLogsRequest {
                deployment_id: id.to_owned(),
                after_sequence: 0,
                page_size: 1000,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .lines
}

pub fn text(lines: &[pb::LogLine]) -> String {
    lines.iter().map(|line| format!("{}\n", line.text)).collect()
}

/// Changes the `paths` of a project's settings to those in `settings`.
pub async fn update_settings(mesh: &TestMesh, token: &str, settings: project_pb::ProjectSettings, paths: &[&str]) {
    mesh.projects()
        .await
        .update_project_settings(authed(
            project_pb::UpdateProjectSettingsRequest {
                settings: Some(settings),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|path| (*path).to_owned()).collect(),
                }),
            },
            token,
        ))
        .await
        .unwrap();
}

/// Creates a deployment of `source_ref` in `environment` (empty: the
/// project's branch, production).
pub async fn create(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
    source_ref: &str,
    environment: &str,
) -> Result<pb::Deployment, tonic::Status> {
    mesh.deploys()
        .await
        .create_deployment(authed(
            pb::CreateDeploymentRequest {
                project_id: project_id.to_owned(),
                source_ref: source_ref.to_owned(),
                environment: environment.to_owned(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The project's deployments, newest first.
pub async fn deployments(mesh: &TestMesh, token: &str, project_id: &str) -> Vec<pb::Deployment> {
    mesh.deploys()
        .await
        .list_deployments(authed(
            pb::ListDeploymentsRequest {
                project_id: project_id.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .deployments
}

/// Rolls back to deployment `id`: the new deployment.
pub async fn rollback(mesh: &TestMesh, token: &str, id: &str) -> pb::Deployment {
    mesh.deploys()
        .await
        .rollback_deployment(authed(
            pb::RollbackDeploymentRequest {
                deployment_id: id.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Waits (up to 40 s) until the deployment's logs contain `marker`;
/// returns them.
pub async fn logs_until(mesh: &TestMesh, token: &str, id: &str, marker: &str) -> String {
    let started = Instant::now();
    loop {
        let all = text(&logs(mesh, token, id).await);
        if all.contains(marker) {
            return all;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "no {marker:?} in:\n{all}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deploys the project and waits (up to 40 s) until the deployment is live.
pub async fn deploy_live(mesh: &TestMesh, token: &str, project_id: &str) -> pb::Deployment {
    let deployment = deploy(mesh, token, project_id).await;
    wait_for(
        mesh,
        token,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(40),
    )
    .await
}

/// The project's host label: its apps answer at `<label>.<apps domain>`.
pub async fn host_label(mesh: &TestMesh, token: &str, project_id: &str) -> String {
    mesh.projects()
        .await
        .get_project(authed(
            project_pb::GetProjectRequest {
                project_id: project_id.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .host_label
}

/// GET `path` of the app at `host` through the gateway: status and body.
pub async fn fetch(client: &reqwest::Client, mesh: &TestMesh, host: &str, path: &str) -> Result<(u16, String), String> {
    let response = client
        .get(format!("http://{}{path}", mesh.http))
        .header("host", format!("{host}.localhost:{}", mesh.http.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|err| err.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.map_err(|err| err.to_string())?))
}

/// Waits until the gateway routes `host` to a live app: the route reaches
/// it over the deploy service's watch stream just after the deployment is
/// live, not in the same instant.
pub async fn until_served(client: &reqwest::Client, mesh: &TestMesh, host: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match fetch(client, mesh, host, "/").await {
            Ok((502, body)) if body.contains("No app is live here") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return,
        }
    }
}
