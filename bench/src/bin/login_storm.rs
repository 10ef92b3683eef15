//! A sign-in storm against `capsule serve auth` (its own process): `STORM`
//! users (default 100), registered one by one, each from an address of its
//! own (127.1.0.1, …), log in `ROUNDS` times (default 3) all at once with
//! the right password. Prints the answers, p50/p99 latency, and the
//! service's RSS at start, after the registrations and at its peak (VmHWM),
//! for each `AUTH_HASH_CONCURRENCY` in `HASH_CONCURRENCY` (default "2,64":
//! the bounded default on this machine, and a bound so loose it is none).

use std::{
    process::Child,
    sync::Arc,
    time::{Duration, Instant},
};

use capsule::{
    config::ServiceKind,
    proto::auth::v1::{self as pb, auth_service_client::AuthServiceClient},
    testing::{self, TestDatabase},
};
use capsule_bench::{env_number, serve};
use tokio::sync::Mutex;

/// A field of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Outcome {
    ok: usize,
    busy: usize,
    other: usize,
    p50: Duration,
    p99: Duration,
    started_kib: u64,
    idle_kib: u64,
    peak_kib: u64,
    elapsed: Duration,
}

async fn storm(binary: &str, hash_concurrency: u64) -> anyhow::Result<Outcome> {
    let clients_count = usize::try_from(env_number("STORM", 100))?;
    let rounds = env_number("ROUNDS", 3);
    let db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let addr = testing::free_listener().await.local_addr()?;
    let service = Service(
        serve(binary, ServiceKind::Auth, &db.url, addr.port())
            .env("AUTH_HASH_CONCURRENCY", hash_concurrency.to_string())
            .spawn()?,
    );
    let pid = service.0.id();
    testing::wait_for_health(addr, "capsule.auth.v1.AuthService", 1, Duration::from_secs(20)).await;
    let started_kib = status_kib(pid, "VmRSS:")?;
    let mut clients = Vec::new();
    for user in 0..clients_count {
        let octets = u32::try_from(user + 1)?.to_be_bytes();
        let from = std::net::Ipv4Addr::new(127, 1, octets[2], octets[3]);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .local_address(Some(from.into()))
            .connect()
            .await?;
        let mut client = AuthServiceClient::new(channel);
        client
            .register(pb::RegisterRequest {
                email: format!("storm-{user}@example.com"),
                password: "correct horse battery staple".into(),
                name: "Storm".into(),
            })
            .await?;
        clients.push((format!("storm-{user}@example.com"), client));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "RSS at start {:.1} MiB, after {clients_count} registrations {:.1} MiB",
        started_kib as f64 / 1024.0,
        status_kib(pid, "VmRSS:")? as f64 / 1024.0
    );
    let idle_kib = status_kib(pid, "VmRSS:")?;

    let latencies = Arc::new(Mutex::new(Vec::new()));
    let codes = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .map(|(email, mut client)| {
            let (latencies, codes) = (latencies.clone(), codes.clone());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let sent = Instant::now();
                    let answer = client
                        .login(pb::LoginRequest {
                            email: email.clone(),
                            password: "correct horse battery staple".into(),
                        })
                        .await;
                    latencies.lock().await.push(sent.elapsed());
                    codes
                        .lock()
                        .await
                        .push(answer.map_or_else(|status| status.code(), |_| tonic::Code::Ok));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    let peak_kib = status_kib(pid, "VmHWM:")?;
    drop(service);

    let mut latencies = latencies.lock().await.clone();
    latencies.sort();
    let at = |quantile: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short list"
        )]
        let index = ((latencies.len() as f64 - 1.0) * quantile).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    };
    let codes = codes.lock().await.clone();
    let count = |code| codes.iter().filter(|c| **c == code).count();
    Ok(Outcome {
        ok: count(tonic::Code::Ok),
        busy: count(tonic::Code::Unavailable),
        other: codes.len() - count(tonic::Code::Ok) - count(tonic::Code::Unavailable),
        p50: at(0.50),
        p99: at(0.99),
        started_kib,
        idle_kib,
        peak_kib,
        elapsed,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::var("CAPSULE_BIN").unwrap_or_else(|_| "target/release/capsule".to_owned());
    let concurrencies = std::env::var("HASH_CONCURRENCY").unwrap_or_else(|_| "2,64".to_owned());
    println!(
        "{} clients x {} logins at once against `capsule serve auth` (argon2id m=19456 KiB t=2 p=1)",
        env_number("STORM", 100),
        env_number("ROUNDS", 3)
    );
    println!(
        "| AUTH_HASH_CONCURRENCY | ok | UNAVAILABLE (busy) | other | p50 | p99 | all done in | RSS at start | RSS after registrations | RSS peak |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for concurrency in concurrencies.split(',').filter_map(|value| value.trim().parse().ok()) {
        let outcome = storm(&binary, concurrency).await?;
        #[expect(clippy::cast_precision_loss, reason = "KiB counts are far below 2^52")]
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "| {concurrency} | {} | {} | {} | {:.0} ms | {:.0} ms | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            outcome.ok,
            outcome.busy,
            outcome.other,
            outcome.p50.as_secs_f64() * 1000.0,
            outcome.p99.as_secs_f64() * 1000.0,
            outcome.elapsed.as_secs_f64(),
            mib(outcome.started_kib),
            mib(outcome.idle_kib),
            mib(outcome.peak_kib),
        );
    }
    Ok(())
}
