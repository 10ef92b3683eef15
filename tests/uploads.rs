//! Sources uploaded by `capsule up`, attacked: an archive whose names
//! climb out (`..`), are absolute, or pass through a link to `/` is
//! unpacked in the sandbox and writes nothing on the host; an upload whose
//! bytes do not match its digest, one over the size limit, and one to
//! another user's project are refused before any deployment exists.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use capsule::proto::deploy::v1::{self as pb, DeploymentState};
use common::{
    TestMesh, authed,
    deploy::{app, logs, text},
};
use sha2::Digest;
use tonic::Code;

/// A tar entry named `name` as written, `..` and `/` included (the tar
/// crate refuses to write such names; an attacker's tool does not).
fn raw_entry(tar: &mut tar::Builder<impl std::io::Write>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut header = tar::Header::new_old();
    let bytes = name.as_bytes();
    header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    if !link.is_empty() {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

fn gzip(tar: Vec<u8>) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &tar).unwrap();
    encoder.finish().unwrap()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

async fn upload(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
    archive: &[u8],
    digest: &str,
) -> Result<pb::Deployment, tonic::Status> {
    let mut pieces = vec![pb::UploadSourceRequest {
        project_id: project_id.to_owned(),
        environment: String::new(),
        source_digest: digest.to_owned(),
        data: Vec::new(),
    }];
    pieces.extend(archive.chunks(1 << 18).map(|chunk| pb::UploadSourceRequest {
        data: chunk.to_vec(),
        ..Default::default()
    }));
    mesh.deploys()
        .await
        .upload_source(authed(futures::stream::iter(pieces), token))
        .await
        .map(tonic::Response::into_inner)
}

/// The deployment once it is live or failed.
async fn settled(mesh: &TestMesh, token: &str, id: &str) -> pb::Deployment {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let deployment = mesh
            .deploys()
            .await
            .get_deployment(authed(
                pb::GetDeploymentRequest {
                    deployment_id: id.to_owned(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        if [DeploymentState::Live as i32, DeploymentState::Failed as i32].contains(&deployment.state) {
            return deployment;
        }
        assert!(std::time::Instant::now() < deadline, "{deployment:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_archive_writes_nothing_on_the_host_and_bad_uploads_are_refused() {
    let mesh = common::start_with(common::Options {
        local_runner: true,
        deploy: vec![("DEPLOY_MAX_UPLOAD_MB", "1"), ("DEPLOY_START_TIMEOUT_SECS", "20")],
        ..Default::default()
    })
    .await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let project = app(&mesh, &mallory, "ls -la; echo unpacked-$((6 * 7))", "", &[]).await;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let tmp = std::env::temp_dir();
    let workdirs = mesh.runner_workdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, "index.html", tar::EntryType::Regular, "", b"fine\n");
    raw_entry(
        &mut tar,
        &format!("../escape-{marker}"),
        tar::EntryType::Regular,
        "",
        b"x",
    );
    raw_entry(
        &mut tar,
        &format!("../../escape-{marker}"),
        tar::EntryType::Regular,
        "",
        b"x",
    );
    raw_entry(
        &mut tar,
        &format!("{}/abs-{marker}", tmp.display()),
        tar::EntryType::Regular,
        "",
        b"x",
    );
    raw_entry(&mut tar, "up", tar::EntryType::Symlink, "/", b"");
    raw_entry(
        &mut tar,
        &format!("up{}/through-{marker}", tmp.display()),
        tar::EntryType::Regular,
        "",
        b"x",
    );
    let archive = gzip(tar.into_inner().unwrap());
    let deployment = upload(&mesh, &mallory, &project, &archive, &digest(&archive))
        .await
        .unwrap();
    assert_eq!(deployment.source_ref, "upload");
    let ended = settled(&mesh, &mallory, &deployment.id).await;
    let log = text(&logs(&mesh, &mallory, &deployment.id).await);
    // tar skipped the names that climb out; the rest was unpacked.
    assert!(
        ended.state == DeploymentState::Live as i32 || log.contains("could not be unpacked"),
        "{ended:?}\n{log}"
    );
    for host in [
        workdirs.join(format!("escape-{marker}")),
        workdirs.parent().unwrap().join(format!("escape-{marker}")),
        tmp.join(format!("abs-{marker}")),
        tmp.join(format!("through-{marker}")),
    ] {
        assert!(!host.exists(), "the archive wrote {} on the host", host.display());
    }

    // The bytes must be the ones named.
    let refused = upload(&mesh, &mallory, &project, &archive, &digest(b"other"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // At most DEPLOY_MAX_UPLOAD_MB (1 here).
    let big: Vec<u8> = (0..(3u32 << 19))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let refused = upload(&mesh, &mallory, &project, &big, &digest(&big))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("DEPLOY_MAX_UPLOAD_MB"), "{refused:?}");
    // Nobody uploads to another user's project.
    let (victim, _) = mesh.user("victim@example.com").await;
    let theirs = app(&mesh, &victim, "true", "", &[]).await;
    let refused = upload(&mesh, &mallory, &theirs, &archive, &digest(&archive))
        .await
        .unwrap_err();
    assert!(
        matches!(refused.code(), Code::PermissionDenied | Code::NotFound),
        "{refused:?}"
    );
    let listed = mesh
        .deploys()
        .await
        .list_deployments(authed(
            pb::ListDeploymentsRequest {
                project_id: theirs,
                ..Default::default()
            },
            &victim,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.deployments.is_empty());
    mesh.stop().await;
}
