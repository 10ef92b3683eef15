//! Rows of the deploy database as the contracts' messages.

use capsule::{proto::deploy::v1 as pb, rpc};

use crate::{
    db::{Deployment, LogRow, runners::Runner},
    lifecycle::State,
};

pub fn deployment_proto(deployment: &Deployment) -> pb::Deployment {
    pb::Deployment {
        id: deployment.id.to_string(),
        project_id: deployment.project_id.to_string(),
        creator_id: deployment.creator_id.to_string(),
        state: deployment.state().proto() as i32,
        source_ref: deployment.source_ref.clone(),
        environment: deployment.environment.clone(),
        rollback_of: deployment.rollback_of.map(|id| id.to_string()).unwrap_or_default(),
        status_message: deployment.status_message.clone(),
        exit_code: deployment.exit_code,
        runner_id: deployment.runner_id.clone().unwrap_or_default(),
        create_time: Some(rpc::timestamp(deployment.created_at)),
        update_time: Some(rpc::timestamp(deployment.updated_at)),
        start_time: deployment.started_at.map(rpc::timestamp),
        finish_time: deployment.finished_at.map(rpc::timestamp),
        commit_sha: deployment.commit_sha.clone(),
        commit_message: deployment.commit_message.clone(),
        commit_author: deployment.commit_author.clone(),
        url: match (deployment.state(), deployment.host()) {
            (State::Live, Some(host)) => capsule::config::app_url(&host),
            _ => String::new(),
        },
        artifact_digest: deployment.artifact_digest.clone().unwrap_or_default(),
    }
}

pub(crate) fn stream_of(name: &str) -> pb::LogStream {
    match name {
        "stdout" => pb::LogStream::Stdout,
        "stderr" => pb::LogStream::Stderr,
        _ => pb::LogStream::System,
    }
}

pub(crate) fn line_proto(row: LogRow) -> pb::LogLine {
    pb::LogLine {
        deployment_id: row.deployment_id.to_string(),
        sequence: row.sequence,
        stream: stream_of(&row.stream) as i32,
        text: row.line,
        time: Some(rpc::timestamp(row.created_at)),
        phase: if row.runtime {
            pb::LogPhase::Runtime
        } else {
            pb::LogPhase::Build
        } as i32,
        process: row.process,
    }
}

pub(crate) fn runner_proto(runner: &Runner) -> pb::Runner {
    pb::Runner {
        id: runner.id.to_string(),
        name: runner.name.clone(),
        creator_id: runner.created_by.map(|id| id.to_string()).unwrap_or_default(),
        create_time: Some(rpc::timestamp(runner.created_at)),
        last_seen_time: runner.last_seen_at.map(rpc::timestamp),
    }
}

pub(crate) fn run_proto(run: &crate::db::runs::Run) -> pb::Run {
    use crate::db::runs;
    pb::Run {
        id: run.id.to_string(),
        project_id: run.project_id.to_string(),
        deployment_id: run.deployment_id.to_string(),
        environment: run.environment.clone(),
        kind: match run.kind.as_str() {
            "cron" => pb::RunKind::Cron,
            _ => pb::RunKind::Command,
        } as i32,
        name: run.name.clone(),
        command: run.command.clone(),
        state: match run.state.as_str() {
            runs::QUEUED => pb::RunState::Queued,
            runs::RUNNING => pb::RunState::Running,
            runs::SUCCEEDED => pb::RunState::Succeeded,
            _ => pb::RunState::Failed,
        } as i32,
        exit_code: run.exit_code,
        status_message: run.status_message.clone(),
        time_limit_seconds: u32::try_from(run.time_limit_secs).unwrap_or_default(),
        creator_id: run.creator_id.map(|id| id.to_string()).unwrap_or_default(),
        scheduled_time: run.scheduled_for.map(rpc::timestamp),
        create_time: Some(rpc::timestamp(run.created_at)),
        start_time: run.started_at.map(rpc::timestamp),
        end_time: run.finished_at.map(rpc::timestamp),
    }
}
