//! tonic alone: `grpc.health.v1.Health` on the address given as its
//! argument, with no layer, no token check, no log or metrics, on the
//! allocator `capsule` uses and served the way it serves (a runtime per
//! core, `capsule::server::cores`). `bench/run` drives its health check
//! beside the project service's to show what a call costs in tonic itself
//! and what Capsule's own server stack adds to every call.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bare_grpc <address:port>"))?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    let never = tokio_util::sync::CancellationToken::new();
    capsule::server::cores::serve(listener, "bare", never.clone(), never, move |connections, stop| {
        router.clone().serve_with_incoming_shutdown(connections, stop)
    })
    .await
}
