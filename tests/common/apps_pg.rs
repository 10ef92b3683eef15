//! The apps' PostgreSQL server of a test: a private cluster of its own
//! (SCRAM passwords only), as `capsule dev` starts one, never the control
//! plane's server.

use capsule::cluster::{Auth, Cluster};

pub struct AppsServer {
    pub admin_url: String,
    pub port: u16,
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl AppsServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The cluster belongs to the postgres user, who must reach it.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let port = super::acme::free_port();
        let cluster = Cluster {
            dir: dir.path().join("cluster"),
            port,
        };
        let password = uuid::Uuid::new_v4().simple().to_string();
        cluster
            .start(&Auth::Scram {
                password: password.clone(),
            })
            .await
            .unwrap();
        Self {
            admin_url: format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres"),
            port,
            cluster,
            _dir: dir,
        }
    }

    /// One statement's rows as text, on `database`, as the admin.
    pub async fn query(&self, database: &str, sql: &str) -> Vec<String> {
        let on = format!("{}/{database}", self.admin_url.trim_end_matches("/postgres"));
        query_as(&on, sql).await.unwrap()
    }

    pub async fn stop(self) {
        self.cluster.stop().await.unwrap();
    }
}

/// One statement's first column as text, connecting with `url`.
pub async fn query_as(url: &str, sql: &str) -> Result<Vec<String>, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|err| {
            err.as_db_error()
                .map_or_else(|| err.to_string(), |db| db.message().to_owned())
        })?;
    tokio::spawn(connection);
    let rows = client.simple_query(sql).await.map_err(|err| {
        err.as_db_error()
            .map_or_else(|| err.to_string(), |db| db.message().to_owned())
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}
