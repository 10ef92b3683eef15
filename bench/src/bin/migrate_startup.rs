//! Migration and start-up timings:
//!
//! 1. `capsule migrate all` on three empty databases, end to end (process
//!    start, connections, every migration): target under 2 s.
//! 2. `capsule serve <svc>` on an already migrated database, from spawn to
//!    health SERVING: target under 300 ms.
//!
//! Each is run `RUNS` times (default 5); the median and the worst are
//! printed. Needs the `capsule` binary: `CAPSULE_BIN`, default
//! `target/release/capsule`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use capsule::{
    config::ServiceKind,
    testing::{self, TestDatabase},
};
use capsule_bench::{migrations, serve};

const SERVING: i32 = 1;

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:7.1} ms   worst {:7.1} ms   (n={})",
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::var("CAPSULE_BIN").unwrap_or_else(|_| "target/release/capsule".to_owned());
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(5);
    anyhow::ensure!(
        std::path::Path::new(&bin).is_file(),
        "{bin} not found: build it (cargo build --release -p capsule-cli) or set CAPSULE_BIN"
    );

    let mut migrate_all = Vec::new();
    for _ in 0..runs {
        let auth = TestDatabase::empty(ServiceKind::Auth).await;
        let project = TestDatabase::empty(ServiceKind::Project).await;
        let deploy = TestDatabase::empty(ServiceKind::Deploy).await;
        let start = Instant::now();
        let output = Command::new(&bin)
            .args(["migrate", "all"])
            .env("AUTH_DATABASE_URL", &auth.url)
            .env("PROJECT_DATABASE_URL", &project.url)
            .env("DEPLOY_DATABASE_URL", &deploy.url)
            .env("RUST_LOG", "warn")
            .output()?;
        migrate_all.push(start.elapsed());
        anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    let mut restart = Vec::new();
    for kind in ServiceKind::WITH_DATABASE {
        let db = TestDatabase::migrated(kind, migrations(kind)).await;
        for _ in 0..runs {
            let port = testing::free_listener().await.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}").parse()?;
            let start = Instant::now();
            let mut child = serve(&bin, kind, &db.url, port).spawn()?;
            loop {
                if testing::health_status(addr, kind.grpc_service_name()).await == Some(SERVING) {
                    break;
                }
                anyhow::ensure!(
                    start.elapsed() < Duration::from_secs(10),
                    "{kind} did not become SERVING"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            restart.push(start.elapsed());
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
            child.wait()?;
        }
    }

    println!("capsule migrate all, 3 empty databases:      {}", summary(migrate_all));
    println!("capsule serve, nothing to migrate → SERVING: {}", summary(restart));
    Ok(())
}
