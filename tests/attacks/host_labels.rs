//! Host names against each other: a project's host label could end in a
//! hyphen — a slug cut at a hyphen, then "-<hex>" — so "<label>--<env>",
//! another project's environment, could be a label; and a project could
//! take a label an operator uses for its own hosts ("api", "www").

use capsule::proto::project::v1 as project_pb;
use tonic::Code;

use crate::common::{TestMesh, authed, deploy::create};

async fn project_with_slug(mesh: &TestMesh, token: &str, slug: &str) -> project_pb::Project {
    mesh.projects()
        .await
        .create_project(authed(
            project_pb::CreateProjectRequest {
                project: Some(project_pb::Project {
                    name: format!("{slug} app"),
                    slug: slug.to_owned(),
                    ..Default::default()
                }),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

fn well_formed(label: &str) -> bool {
    !label.is_empty()
        && label
            .split('-')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_label_is_reserved_or_another_projects_environment_host() {
    let mesh = crate::common::start().await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let (accomplice, _) = mesh.user("accomplice@example.com").await;

    for reserved in ["api", "www", "admin"] {
        let taken = project_with_slug(&mesh, &mallory, reserved).await;
        assert_ne!(
            taken.host_label, reserved,
            "a project got the reserved label {reserved}"
        );
        assert!(well_formed(&taken.host_label), "{}", taken.host_label);
    }

    // A slug whose first 54 characters end with a hyphen, taken twice: the
    // second label was "<53 letters>--<hex>", the host of environment
    // <hex> of a project labelled with those 53 letters.
    let slug = format!("{}-bc", "a".repeat(53));
    let first = project_with_slug(&mesh, &mallory, &slug).await;
    let second = project_with_slug(&mesh, &accomplice, &slug).await;
    for label in [&first.host_label, &second.host_label] {
        assert!(
            well_formed(label),
            "{label:?} could be another project's environment host"
        );
    }
    assert_ne!(first.host_label, second.host_label);

    // Environments are refused where "<label>--<environment>" could be read
    // two ways.
    for environment in ["x--y", "-x", "x-"] {
        let refused = create(&mesh, &mallory, &first.id, "", environment).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{environment}: {refused:?}");
    }
    mesh.stop().await;
}
