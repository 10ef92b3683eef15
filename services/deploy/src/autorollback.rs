//! Automatic rollback: a deployment that goes live and then crashes (its
//! runner gave up restarting it) within `DEPLOY_AUTO_ROLLBACK_SECS` is
//! replaced by the release it superseded — started from its kept
//! artifact, without a build. Both deployments' logs say why, the new one
//! is a rollback (`rollback_of`, the `deployment.rolled_back` webhook
//! event) and the audit trail records it as the platform's act.

use capsule::audit::{Actor, Event};
use chrono::Utc;
use diesel::prelude::*;

use crate::{
    db::{self, Deployment, NewDeployment, schema::deployments},
    lifecycle::State,
    state::DeployServiceApi,
};

impl DeployServiceApi {
    /// Rolls `crashed` back to the release it superseded, when it crashed
    /// soon enough after going live and that release was kept.
    pub(crate) async fn roll_back_crashed(&self, crashed: &Deployment) {
        let window = self.inner.auto_rollback;
        if window.is_zero() {
            return;
        }
        let id = crashed.id;
        let previous = self
            .inner
            .db
            .run(move |conn| {
                deployments::table
                    .filter(deployments::state.eq(State::Superseded.as_str()))
                    .filter(deployments::status_message.eq(format!("superseded by {id}")))
                    .filter(deployments::artifact_digest.is_not_null())
                    .select(Deployment::as_select())
                    .first(conn)
                    .optional()
            })
            .await;
        let previous = match previous {
            Ok(Some(previous)) => previous,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(error = %err, deployment.id = %id, "cannot look for the release to roll back to");
                return;
            }
        };
        // It went live when the previous one was superseded.
        let live_for = previous.finished_at.map(|at| Utc::now() - at);
        if live_for.is_none_or(|live_for| live_for > window) {
            return;
        }
        let seconds = live_for.map_or(0, |live_for| live_for.num_seconds());
        let new = NewDeployment {
            project_id: previous.project_id,
            creator_id: crashed.creator_id,
            owner_id: crashed.owner_id.or(previous.owner_id),
            source_ref: previous.source_ref.clone(),
            environment: previous.environment.clone(),
            snapshot: previous.snapshot.clone(),
            rollback_of: Some(previous.id),
            artifact_digest: previous.artifact_digest.clone(),
            commit_sha: previous.commit_sha.clone(),
            commit_message: previous.commit_message.clone(),
            commit_author: previous.commit_author.clone(),
            host_label: previous.host_label.clone(),
        };
        let rollback = match self.create(new).await {
            Ok(rollback) => rollback,
            Err(status) => {
                tracing::warn!(error = %status.message(), deployment.id = %id, "automatic rollback not queued");
                return;
            }
        };
        let why = format!("{id} crashed {seconds} s after going live (within DEPLOY_AUTO_ROLLBACK_SECS)");
        let (crashed_line, rollback_line) = (
            format!(
                "rolled back automatically: {} starts release {} of {}",
                rollback.id,
                previous.artifact_digest.clone().unwrap_or_default(),
                previous.id
            ),
            format!("automatic rollback to {}: {why}", previous.id),
        );
        let rollback_id = rollback.id;
        let logged = self
            .inner
            .db
            .run(move |conn| {
                db::append(conn, id, &[("system", crashed_line)], None)?;
                db::append(conn, rollback_id, &[("system", rollback_line)], None)
            })
            .await;
        if let Err(err) = logged {
            tracing::warn!(error = %err, "the automatic rollback is not in the logs");
        }
        tracing::info!(deployment.id = %id, rollback.id = %rollback_id, "crashed deployment rolled back");
        self.audit(
            Event::new(
                &Actor::default(),
                "deployment.rolled_back",
                format!("deployments/{rollback_id}"),
            )
            .project(rollback.project_id)
            .detail("rollback_of", previous.id)
            .detail("crashed", id),
        )
        .await;
    }
}
