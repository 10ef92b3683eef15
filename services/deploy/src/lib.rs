//! Capsule's deploy service: deployments with a lifecycle, runners that
//! execute them, logs that stream.

mod acme;
mod autorollback;
pub mod config;
mod convert;
mod cron;
pub mod databases;
mod db;
mod gauges;
mod grpc;
mod lifecycle;
mod notify;
mod preview;
mod projects;
mod push;
mod reap;
mod refs;
mod runners;
mod state;
mod validate;
mod webhooks;

use std::sync::Arc;

use capsule::{
    auth::KeySet,
    config::{DbConfig, Mesh, ServeConfig, ServiceKind},
    db::Database,
    migrate::MigrationSet,
    proto::{
        auth::v1::auth_service_client::AuthServiceClient, deploy::v1::deploy_service_server::DeployServiceServer,
        project::v1::project_service_client::ProjectServiceClient,
    },
    server::GrpcServer,
};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use acme::AcmeConfig;
pub use config::{DeployConfig, RunnerConfig};
pub use db::explain_reads;
pub use state::DeployServiceApi;

static EMBEDDED: EmbeddedMigrations = embed_migrations!("../../migrations/deploy");

/// The deploy database's migrations, embedded at build time.
pub static MIGRATIONS: MigrationSet =
    MigrationSet::new(ServiceKind::Deploy, &EMBEDDED, capsule::migrate::files::DEPLOY);

/// Serves the deploy service on `listener` until `shutdown` is cancelled,
/// with the local runner when `config.runner` is set.
pub async fn serve(
    listener: TcpListener,
    db_config: DbConfig,
    mesh: Mesh,
    config: DeployConfig,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Fail fast: a runner that cannot sandbox must not start.
    let sandbox = match &config.runner {
        Some(runner) => Some(
            capsule_runner::sandbox::Sandbox::new(runner.sandbox.clone(), &runner.workdir)
                .await
                .map_err(|why| anyhow::anyhow!("the local runner {why}"))?,
        ),
        None => None,
    };
    let db = Database::new(db_config.clone())?;
    let hub = notify::Hub::start(db_config.connection_url(), shutdown.clone());
    let projects = ProjectServiceClient::new(capsule::tls::channel(&mesh.services.project)?);
    let keys: Arc<KeySet> = mesh.key_set()?;
    capsule::db::refuse_unknown_keys(
        db.clone(),
        sealed_key_ids,
        mesh.secrets.encryption.clone(),
        shutdown.clone(),
    );
    let api = DeployServiceApi::new(
        db.clone(),
        hub.clone(),
        projects,
        keys.clone(),
        mesh.secrets.encryption.clone(),
        mesh.secrets.internal_secret.clone(),
        &config,
    )?;
    keys.accept_runners(Arc::new(runners::RegisteredRunners(db.clone())));
    tokio::spawn(prune_logs(
        db.clone(),
        config.log_retention,
        config.releases_dir.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(gauges::run(db.clone(), shutdown.clone()));
    tokio::spawn(webhooks::send::run(
        db.clone(),
        hub.clone(),
        config.webhooks.clone(),
        mesh.secrets.encryption.clone(),
        shutdown.clone(),
    ));
    if let Some(every) = config.poll_interval {
        let poll = push::PollConfig {
            every,
            concurrency: config.poll_concurrency,
            attempt: config.poll_timeout,
        };
        tokio::spawn(push::poll(api.clone(), poll, shutdown.clone()));
    }
    let auth = AuthServiceClient::new(capsule::tls::channel(&mesh.services.auth)?);
    tokio::spawn(reap::run(api.clone(), auth, config.reap_interval, shutdown.clone()));
    tokio::spawn(cron::run(api.clone(), shutdown.clone()));
    tokio::spawn(api.inner.acme.clone().run(hub.clone(), shutdown.clone()));
    tokio::spawn(api.inner.databases.clone().run(shutdown.clone()));

    let runner = match (&config.runner, sandbox) {
        (Some(runner_config), Some(sandbox)) => {
            let addr = listener.local_addr()?;
            let endpoint = format!("http://127.0.0.1:{}", addr.port());
            let (db, config, shutdown) = (db.clone(), runner_config.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                // Its own credential, registered once the database is ready;
                // no shared token exists.
                let Some(token) = register_local_runner(&db, &shutdown).await else {
                    return;
                };
                match capsule_runner::Runner::new(&endpoint, &token, config, sandbox) {
                    Ok(runner) => runner.run(shutdown).await,
                    Err(err) => tracing::error!(error = %err, "the local runner cannot start"),
                }
            }))
        }
        _ => None,
    };

    let result = GrpcServer::new(ServiceKind::Deploy)
        .require_access(keys)
        .add_service(DeployServiceServer::new(api).max_decoding_message_size(capsule::server::MAX_MESSAGE_BYTES))
        .serve_with_database(db, &MIGRATIONS, listener, &serve_config, shutdown)
        .await;
    if let Some(runner) = runner {
        let _ = runner.await;
    }
    result
}

/// Registers this process's local runner (a fresh token each start),
/// retrying until the database is ready; `None` on shutdown.
async fn register_local_runner(db: &Database, shutdown: &CancellationToken) -> Option<String> {
    let name = capsule_runner::local_name();
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        let (token, hash) = runners::new_runner_token().ok()?;
        let name = name.clone();
        match db
            .run(move |conn| db::runners::Runner::register_local(conn, &name, &hash))
            .await
        {
            Ok(runner) => {
                tracing::info!(runner.id = %runner.id, runner.name = %runner.name, "local runner registered");
                return Some(token);
            }
            Err(err) => tracing::debug!(error = %err, "cannot register the local runner yet; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Deletes old deployments' logs and settled webhook deliveries, now and
/// then hourly, in batches.
async fn prune_logs(
    db: Database,
    retention: std::time::Duration,
    releases: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        return;
    };
    loop {
        loop {
            let cutoff = chrono::Utc::now() - retention;
            match db.run(move |conn| db::prune_logs(conn, cutoff, 100)).await {
                Ok(0) => break,
                Ok(pruned) => tracing::info!(deployments = pruned, "old deployment logs deleted"),
                Err(err) => {
                    tracing::debug!(error = %err, "cannot prune logs now");
                    break;
                }
            }
        }
        let cutoff = chrono::Utc::now() - retention;
        match db.run(move |conn| db::webhooks::prune(conn, cutoff)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(deliveries = pruned, "old webhook deliveries deleted"),
            Err(err) => tracing::debug!(error = %err, "cannot prune webhook deliveries now"),
        }
        if let Err(err) = db.run(db::replicas::prune_expired).await {
            tracing::debug!(error = %err, "cannot prune replicas now");
        }
        match db.run(db::replicas::releases_in_use).await {
            Ok(kept) => prune_releases(&releases, &kept),
            Err(err) => tracing::debug!(error = %err, "cannot prune releases now"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}

/// Deletes the uploaded releases and sources no deployment needs any more
/// (not live, nor among the newest of its project and environment, nor
/// waiting to be built), once an hour old: one being uploaded is not yet
/// named by its deployment.
fn prune_releases(dir: &std::path::Path, kept: &std::collections::HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Releases, and sources uploaded by `capsule up`.
        let digest = name
            .strip_suffix(".tar.zst")
            .or_else(|| {
                name.strip_prefix("source-")
                    .and_then(|rest| rest.strip_suffix(".tar.gz"))
            })
            .map(|hex| format!("sha256:{hex}"));
        let old = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if old && digest.is_none_or(|digest| !kept.contains(&digest)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The ids of the keys that sealed what this database stores (webhooks'
/// secrets, certificates' keys, ACME accounts).
fn sealed_key_ids(conn: &mut diesel::PgConnection) -> diesel::QueryResult<Vec<String>> {
    let mut ids = webhooks::key_ids(conn)?;
    ids.extend(acme::key_ids(conn)?);
    ids.extend(databases::key_ids(conn)?);
    Ok(ids)
}

/// Seals every webhook's signing secret, certificate key and ACME
/// account under the first key of `CAPSULE_ENCRYPTION_KEYS` (`capsule
/// secrets reencrypt`). How many.
pub async fn reencrypt(db_config: DbConfig, keys: Arc<capsule::crypto::Keyring>) -> anyhow::Result<usize> {
    let db = Database::new(db_config)?;
    db.run(move |conn| {
        Ok(webhooks::reencrypt(conn, &keys).and_then(|webhooks| Ok(webhooks + acme::reencrypt(conn, &keys)?)))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_no_deployment_needs_go_once_an_hour_old() {
        let dir = tempfile::tempdir().unwrap();
        let hex = |c: char| c.to_string().repeat(64);
        let (needed, stale, fresh, source, stale_source) = (hex('a'), hex('b'), hex('c'), hex('d'), hex('e'));
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        let files = [
            format!("{needed}.tar.zst"),
            format!("{stale}.tar.zst"),
            format!("{fresh}.tar.zst"),
            format!("source-{source}.tar.gz"),
            format!("source-{stale_source}.tar.gz"),
        ];
        for name in &files {
            let path = dir.path().join(name);
            std::fs::write(&path, b"archive").unwrap();
            if *name != files[2] {
                std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(two_hours_ago)
                    .unwrap();
            }
        }
        let kept = [format!("sha256:{needed}"), format!("sha256:{source}")]
            .into_iter()
            .collect();
        prune_releases(dir.path(), &kept);
        let left: std::collections::HashSet<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let expected = [files[0].clone(), files[2].clone(), files[3].clone()]
            .into_iter()
            .collect();
        assert_eq!(
            left, expected,
            "the release and the uploaded source in use, and the release being uploaded, stay"
        );
    }
}
