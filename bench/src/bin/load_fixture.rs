//! Prepares what `bench/run` replays: a fresh user with an access token, one
//! project to read, and the framed gRPC request bodies h2load sends.
//!
//! Usage: `load_fixture wait <auth-addr> <project-addr>` returns once both
//! report SERVING (no call that allocates: the idle memory is read after
//! it). `load_fixture <auth-url> <project-url> <out-dir>` writes
//! `get.grpc` and `create.grpc` (a gRPC frame: flag, length, protobuf) to
//! `<out-dir>` and prints `{"token", "project_id", "owner_id"}` as JSON.

use std::path::PathBuf;

use anyhow::Context;
use capsule::proto::{
    auth::v1::{self as auth, auth_service_client::AuthServiceClient},
    project::v1::{self as project, project_service_client::ProjectServiceClient},
};
use prost::Message;

/// Length-prefixed message framing (gRPC over HTTP/2), uncompressed.
fn frame(message: &impl Message) -> anyhow::Result<Vec<u8>> {
    let body = message.encode_to_vec();
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    framed.extend_from_slice(&body);
    Ok(framed)
}

fn create_request(name: &str) -> project::CreateProjectRequest {
    project::CreateProjectRequest {
        project: Some(project::Project {
            name: name.to_owned(),
            ..Default::default()
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let usage = "usage: load_fixture [wait] <auth-url> <project-url> <out-dir>";
    if args.peek().is_some_and(|arg| arg == "wait") {
        for addr in args.skip(1) {
            let addr: std::net::SocketAddr = addr.parse().context(usage)?;
            capsule::testing::wait_for_health(addr, "", 1, std::time::Duration::from_secs(60)).await;
        }
        return Ok(());
    }
    let auth_url = args.next().context(usage)?;
    let project_url = args.next().context(usage)?;
    let out = PathBuf::from(args.next().context(usage)?);

    let mut auth = AuthServiceClient::connect(auth_url).await?;
    let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
    let registered = auth
        .register(auth::RegisterRequest {
            email,
            password: "bench-password-of-some-length".into(),
            name: "Bench".into(),
        })
        .await?
        .into_inner();
    let owner_id = registered.user.context("Register returned no user")?.id;
    let token = registered.tokens.context("Register returned no tokens")?.access_token;

    let mut projects = ProjectServiceClient::connect(project_url).await?;
    let authorization: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let create = |name: &str| {
        let mut request = tonic::Request::new(create_request(name));
        request.metadata_mut().insert("authorization", authorization.clone());
        request
    };
    let project_id = projects.create_project(create("Bench read")).await?.into_inner().id;
    // The name the insert benchmark sends, taken once: every insert after
    // it gets a suffixed slug, the same path for every request.
    projects.create_project(create("Bench")).await?;

    std::fs::write(
        out.join("get.grpc"),
        frame(&project::GetProjectRequest {
            project_id: project_id.clone(),
        })?,
    )?;
    std::fs::write(out.join("create.grpc"), frame(&create_request("Bench"))?)?;
    println!(
        "{}",
        serde_json::json!({ "token": token, "project_id": project_id, "owner_id": owner_id })
    );
    Ok(())
}
