//! Projects and their settings through gRPC, with real auth and PostgreSQL.

mod common;

use capsule::proto::project::v1::{self as pb};
use common::{authed, violated_fields};
use tonic::Code;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_owned_paged_updated_and_soft_deleted() {
    let mesh = common::start().await;
    let (alice, alice_id) = mesh.user("alice@example.com").await;
    let mut projects = mesh.projects().await;

    let created = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                project: Some(pb::Project {
                    name: "My First App!".into(),
                    description: "hello".into(),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.slug, "my-first-app");
    assert_eq!(created.owner_id, alice_id);

    let duplicate = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                project: Some(pb::Project {
                    name: "Other".into(),
                    slug: "my-first-app".into(),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    // A slug derived from the name is made free instead: the same name
    // twice gives two projects, the second slug suffixed.
    let mut derived = Vec::new();
    for _ in 0..2 {
        let project = projects
            .create_project(authed(
                pb::CreateProjectRequest {
                    project: Some(pb::Project {
                        name: "My first app".into(),
                        ..Default::default()
                    }),
                },
                &alice,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            project.slug.starts_with("my-first-app-") && project.slug.len() == "my-first-app-".len() + 8,
            "{}",
            project.slug
        );
        // Created with its default settings, in the same statement.
        let settings = projects
            .get_project_settings(authed(
                pb::GetProjectSettingsRequest {
                    project_id: project.id.clone(),
                },
                &alice,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(settings.branch, "main");
        derived.push(project.slug);
    }
    assert_ne!(derived[0], derived[1]);

    for i in 0..4 {
        projects
            .create_project(authed(
                pb::CreateProjectRequest {
                    project: Some(pb::Project {
                        name: format!("App {i}"),
                        ..Default::default()
                    }),
                },
                &alice,
            ))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = projects
            .list_projects(authed(
                pb::ListProjectsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    show_deleted: false,
                    organization_id: String::new(),
                },
                &alice,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.projects.len() <= 2);
        seen.extend(page.projects.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 7, "every project once, in a stable order");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 7);

    let updated = projects
        .update_project(authed(
            pb::UpdateProjectRequest {
                project: Some(pb::Project {
                    id: created.id.clone(),
                    name: "Renamed".into(),
                    slug: "ignored-not-in-mask".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["name"]),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.name.as_str(), updated.slug.as_str()),
        ("Renamed", "my-first-app")
    );

    let deleted = projects
        .delete_project(authed(
            pb::DeleteProjectRequest {
                project_id: created.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some() && deleted.purge_time.is_some());
    let listed = projects
        .list_projects(authed(pb::ListProjectsRequest::default(), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.projects.len(), 6, "deleted projects are hidden by default");
    let change = projects
        .update_project(authed(
            pb::UpdateProjectRequest {
                project: Some(pb::Project {
                    id: created.id.clone(),
                    name: "Nope".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["name"]),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(change.code(), Code::NotFound);
    assert!(change.message().contains(":undelete"), "{change:?}");
    let gone = projects
        .get_project(authed(
            pb::GetProjectRequest {
                project_id: created.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        gone.code(),
        Code::NotFound,
        "a deleted project is gone but for undeleting it"
    );
    let restored = projects
        .undelete_project(authed(
            pb::UndeleteProjectRequest {
                project_id: created.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.delete_time.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_see_nothing_and_anonymous_calls_are_refused() {
    let mesh = common::start().await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let (bob, _) = mesh.user("bob@example.com").await;
    let mut projects = mesh.projects().await;
    let project = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                project: Some(pb::Project {
                    name: "Secret Plans".into(),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let id = project.id.clone();

    let get = projects
        .get_project(authed(pb::GetProjectRequest { project_id: id.clone() }, &bob))
        .await;
    assert_eq!(get.unwrap_err().code(), Code::NotFound);
    let settings = projects
        .get_project_settings(authed(pb::GetProjectSettingsRequest { project_id: id.clone() }, &bob))
        .await;
    assert_eq!(settings.unwrap_err().code(), Code::NotFound);
    let update = projects
        .update_project(authed(
            pb::UpdateProjectRequest {
                project: Some(pb::Project {
                    id: id.clone(),
                    name: "Mine now".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["name"]),
            },
            &bob,
        ))
        .await;
    assert_eq!(update.unwrap_err().code(), Code::NotFound);
    let delete = projects
        .delete_project(authed(pb::DeleteProjectRequest { project_id: id.clone() }, &bob))
        .await;
    assert_eq!(delete.unwrap_err().code(), Code::NotFound);
    let variable = projects
        .set_environment_variable(authed(
            pb::SetEnvironmentVariableRequest {
                project_id: id.clone(),
                variable: Some(pb::EnvironmentVariable {
                    name: "X".into(),
                    value: "y".into(),
                    ..Default::default()
                }),
            },
            &bob,
        ))
        .await;
    assert_eq!(variable.unwrap_err().code(), Code::NotFound);
    let list = projects
        .list_projects(authed(pb::ListProjectsRequest::default(), &bob))
        .await
        .unwrap();
    assert!(list.into_inner().projects.is_empty());

    let anonymous = projects
        .get_project(pb::GetProjectRequest { project_id: id.clone() })
        .await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);

    let admin = mesh.admin("root@example.com").await;
    let seen = projects
        .get_project(authed(pb::GetProjectRequest { project_id: id.clone() }, &admin))
        .await;
    assert_eq!(seen.unwrap().into_inner().name, "Secret Plans", "admins see everything");

    // PrepareDeployment is for services: a user's token alone is refused.
    let internal = projects
        .prepare_deployment(authed(pb::PrepareDeploymentRequest { project_id: id }, &alice))
        .await;
    assert_eq!(internal.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_its_fields_and_secrets_stay_write_only() {
    let mesh = common::start().await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let mut projects = mesh.projects().await;
    let bad = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                project: Some(pb::Project {
                    name: "\u{1b}[31mred".into(),
                    slug: "Not A Slug".into(),
                    description: "d".repeat(1001),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&bad),
        ["project.name", "project.slug", "project.description"]
    );

    let project = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                project: Some(pb::Project {
                    name: "api".into(),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    for (page_size, ok) in [
        (0, true),
        (100, true),
        (-1, false),
        (101, false),
        (1_000_000_000, false),
    ] {
        let listed = projects
            .list_projects(authed(
                pb::ListProjectsRequest {
                    page_size,
                    ..Default::default()
                },
                &alice,
            ))
            .await;
        assert_eq!(listed.is_ok(), ok, "page_size {page_size}");
    }
    let garbage = projects
        .list_projects(authed(
            pb::ListProjectsRequest {
                page_token: "garbage!".into(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&garbage), ["page_token"]);

    let settings = projects
        .update_project_settings(authed(
            pb::UpdateProjectSettingsRequest {
                settings: Some(pb::ProjectSettings {
                    project_id: project.id.clone(),
                    build_command: "x".repeat(5000),
                    root_directory: "../../etc".into(),
                    branch: "bad..branch".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["build_command", "root_directory", "branch"]),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&settings),
        ["settings.build_command", "settings.root_directory", "settings.branch"]
    );
    let bad_id = projects
        .get_project(authed(
            pb::GetProjectRequest {
                project_id: "42".into(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_id), ["project_id"]);

    let variable = |name: &str, value: &str, secret: bool| pb::SetEnvironmentVariableRequest {
        project_id: project.id.clone(),
        variable: Some(pb::EnvironmentVariable {
            name: name.into(),
            value: value.into(),
            secret,
            update_time: None,
        }),
    };
    let bad_name = projects
        .set_environment_variable(authed(variable("1-BAD NAME", "v", false), &alice))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_name), ["variable.name"]);
    let too_big = projects
        .set_environment_variable(authed(variable("BIG", &"x".repeat(40_000), false), &alice))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&too_big), ["variable.value"]);

    let secret = projects
        .set_environment_variable(authed(variable("API_KEY", "sk-live-very-secret", true), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(secret.value, "", "a secret is never returned");
    projects
        .set_environment_variable(authed(variable("PUBLIC_URL", "https://example.com", false), &alice))
        .await
        .unwrap();
    let read = projects
        .get_project_settings(authed(
            pb::GetProjectSettingsRequest {
                project_id: project.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<(&str, &str, bool)> = read
        .environment_variables
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_str(), v.secret))
        .collect();
    assert_eq!(
        names,
        [("API_KEY", "", true), ("PUBLIC_URL", "https://example.com", false)]
    );
    assert!(!format!("{read:?}").contains("sk-live-very-secret"));

    for i in 0..98 {
        projects
            .set_environment_variable(authed(variable(&format!("V{i}"), "v", false), &alice))
            .await
            .unwrap();
    }
    let over = projects
        .set_environment_variable(authed(variable("ONE_TOO_MANY", "v", false), &alice))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
}
