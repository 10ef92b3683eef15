//! The authorization matrix: every Capsule RPC, read from the descriptors,
//! called as {anonymous, user, admin, runner}; a new RPC without a declared
//! access level fails here.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use bytes::{Buf, BufMut};
use capsule::{
    auth::{Access, policies},
    config::ServiceKind,
};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// Sends and receives raw protobuf bytes: an empty message is a valid
/// request of every type.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Self::Encoder {
        Raw
    }

    fn decoder(&mut self) -> Self::Decoder {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// The status of calling `path` with an empty request as `token`.
/// Where an RPC is served: its service's own port, or, for the database
/// admin API, every service that owns a database.
fn served_by(path: &str) -> Vec<ServiceKind> {
    let service = path.trim_start_matches('/').split('/').next().unwrap();
    if service == "capsule.admin.v1.DatabaseAdmin" {
        return vec![ServiceKind::Auth, ServiceKind::Project, ServiceKind::Deploy];
    }
    let kind = ServiceKind::ALL
        .into_iter()
        .find(|kind| kind.grpc_service_name() == service)
        .unwrap_or_else(|| panic!("{path}: no service serves {service}"));
    vec![kind]
}

async fn call(mesh: &common::TestMesh, kind: ServiceKind, path: &str, token: Option<&str>) -> Code {
    let channel = capsule::testing::channel(mesh.addr(kind)).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(Vec::new());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    let name = path.path().trim_start_matches('/').replace('/', ".");
    let streaming = capsule::proto::pool()
        .get_service_by_name(name.rsplit_once('.').unwrap().0)
        .and_then(|service| service.methods().find(|method| method.full_name() == name))
        .is_some_and(|method| method.is_server_streaming());
    if streaming {
        return match grpc.server_streaming(request, path, Raw).await {
            // A refusal may come as the first message; a stream that stays
            // open with nothing to say yet was let in.
            Ok(mut stream) => {
                match tokio::time::timeout(std::time::Duration::from_secs(2), stream.get_mut().message()).await {
                    Ok(Err(status)) => status.code(),
                    Ok(Ok(_)) | Err(_) => Code::Ok,
                }
            }
            Err(status) => status.code(),
        };
    }
    match grpc.unary(request, path, Raw).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn denied(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_kind_of_caller_as_its_policy_says() {
    let mut methods: Vec<(&String, &Access)> = policies().iter().collect();
    methods.sort_by_key(|(path, _)| path.as_str());
    let undeclared: Vec<&String> = methods
        .iter()
        .filter(|(_, access)| **access == Access::Unspecified)
        .map(|(path, _)| *path)
        .collect();
    assert!(
        undeclared.is_empty(),
        "RPCs without (capsule.auth.v1.access): {undeclared:?}"
    );
    assert!(methods.len() >= 40, "{}", methods.len());

    let mesh = common::start().await;
    let (_, runner) = mesh.runner("matrix-runner").await;
    let mut rows = Vec::new();
    let calls = methods
        .into_iter()
        .flat_map(|(path, access)| served_by(path).into_iter().map(move |kind| (kind, path, access)));
    for (index, (kind, path, access)) in calls.enumerate() {
        // Fresh callers for each RPC: some of them end sessions.
        let (user, _) = mesh.user(&format!("matrix-user-{index}@example.com")).await;
        let admin = mesh.admin(&format!("matrix-admin-{index}@example.com")).await;
        let anonymous = call(&mesh, kind, path, None).await;
        let as_user = call(&mesh, kind, path, Some(&user)).await;
        let as_admin = call(&mesh, kind, path, Some(&admin)).await;
        let as_runner = call(&mesh, kind, path, Some(&runner)).await;
        rows.push(format!(
            "{path} on {kind}: {access:?} anonymous={anonymous:?} user={as_user:?} admin={as_admin:?} \
             runner={as_runner:?}"
        ));
        let (expect_anonymous, expect_user, expect_admin, expect_runner) = match access {
            Access::Public => (true, true, true, true),
            Access::Authenticated => (false, true, true, false),
            Access::Admin => (false, false, true, false),
            Access::Runner => (false, false, false, true),
            // Calls between services need the services' shared secret.
            Access::Internal | Access::Service => (false, false, false, false),
            Access::Unspecified => unreachable!(),
        };
        for (who, code, allowed) in [
            ("anonymous", anonymous, expect_anonymous),
            ("user", as_user, expect_user),
            ("admin", as_admin, expect_admin),
            ("runner", as_runner, expect_runner),
        ] {
            assert_eq!(
                !denied(code),
                allowed,
                "{path} ({access:?}) as {who}: {code:?}\n{}",
                rows.join("\n")
            );
            assert_ne!(code, Code::Internal, "{path} as {who}");
            assert_ne!(code, Code::Unimplemented, "{path} as {who}");
        }
        if *access != Access::Public {
            assert_eq!(anonymous, Code::Unauthenticated, "{path} without a token");
        }
    }
    mesh.stop().await;
}

/// What each organisation role may call, written out: a change to a
/// method's `(capsule.auth.v1.permission)` or to a role's permissions must
/// change this table too. Columns: viewer, developer, admin, owner.
const ROLE_MATRIX: &[(&str, [bool; 4])] = &[
    ("project.v1.ProjectService/GetProject", [true, true, true, true]),
    ("project.v1.ProjectService/ListProjects", [true, true, true, true]),
    ("project.v1.ProjectService/GetProjectSettings", [true, true, true, true]),
    ("project.v1.ProjectService/GetDeployKey", [true, true, true, true]),
    ("project.v1.ProjectService/GetOrganization", [true, true, true, true]),
    ("project.v1.ProjectService/ListMembers", [true, true, true, true]),
    ("deploy.v1.DeployService/GetDeployment", [true, true, true, true]),
    ("deploy.v1.DeployService/ListDeployments", [true, true, true, true]),
    ("deploy.v1.DeployService/GetLogs", [true, true, true, true]),
    ("deploy.v1.DeployService/GetEgressRecord", [true, true, true, true]),
    ("deploy.v1.DeployService/ListRuns", [true, true, true, true]),
    ("deploy.v1.DeployService/ListDomains", [true, true, true, true]),
    ("deploy.v1.DeployService/GetDatabase", [true, true, true, true]),
    ("deploy.v1.DeployService/ListBackups", [true, true, true, true]),
    ("deploy.v1.DeployService/StreamLogs", [true, true, true, true]),
    ("project.v1.ProjectService/CreateProject", [false, true, true, true]),
    ("project.v1.ProjectService/UpdateProject", [false, true, true, true]),
    (
        "project.v1.ProjectService/UpdateProjectSettings",
        [false, true, true, true],
    ),
    (
        "project.v1.ProjectService/SetEnvironmentVariable",
        [false, true, true, true],
    ),
    (
        "project.v1.ProjectService/DeleteEnvironmentVariable",
        [false, true, true, true],
    ),
    ("project.v1.ProjectService/PrepareDeployment", [false, true, true, true]),
    ("deploy.v1.DeployService/CreateDeployment", [false, true, true, true]),
    ("deploy.v1.DeployService/UploadSource", [false, true, true, true]),
    ("deploy.v1.DeployService/CancelDeployment", [false, true, true, true]),
    ("deploy.v1.DeployService/RollbackDeployment", [false, true, true, true]),
    ("deploy.v1.DeployService/ClearBuildCache", [false, true, true, true]),
    ("deploy.v1.DeployService/RunCommand", [false, true, true, true]),
    ("deploy.v1.DeployService/AddDomain", [false, true, true, true]),
    ("deploy.v1.DeployService/RemoveDomain", [false, true, true, true]),
    ("deploy.v1.DeployService/CreateBackup", [false, true, true, true]),
    ("deploy.v1.DeployService/CreateDatabase", [false, false, true, true]),
    ("deploy.v1.DeployService/RestoreDatabase", [false, false, true, true]),
    ("deploy.v1.DeployService/DownloadBackup", [false, false, true, true]),
    (
        "project.v1.ProjectService/RotateWebhookSecret",
        [false, false, true, true],
    ),
    ("project.v1.ProjectService/RotateDeployKey", [false, false, true, true]),
    ("project.v1.ProjectService/DeleteProject", [false, false, true, true]),
    ("project.v1.ProjectService/UndeleteProject", [false, false, true, true]),
    ("project.v1.ProjectService/TransferProject", [false, false, true, true]),
    ("project.v1.ProjectService/InviteMember", [false, false, true, true]),
    ("project.v1.ProjectService/ListInvitations", [false, false, true, true]),
    ("project.v1.ProjectService/DeleteInvitation", [false, false, true, true]),
    ("project.v1.ProjectService/UpdateMember", [false, false, true, true]),
    ("project.v1.ProjectService/RemoveMember", [false, false, true, true]),
    (
        "project.v1.ProjectService/CreateOrganizationApiToken",
        [false, false, true, true],
    ),
    (
        "project.v1.ProjectService/ListOrganizationApiTokens",
        [false, false, true, true],
    ),
    (
        "project.v1.ProjectService/RevokeOrganizationApiToken",
        [false, false, true, true],
    ),
    ("project.v1.ProjectService/ListAuditEvents", [false, false, true, true]),
    ("deploy.v1.DeployService/ListAuditEvents", [false, false, true, true]),
    ("auth.v1.AuthService/ListAuditEvents", [false, false, true, true]),
    ("gateway.v1.GatewayService/ListAuditEvents", [false, false, true, true]),
    (
        "gateway.v1.GatewayService/StreamAuditEvents",
        [false, false, true, true],
    ),
    ("deploy.v1.DeployService/CreateWebhook", [false, false, true, true]),
    ("deploy.v1.DeployService/ListWebhooks", [false, false, true, true]),
    ("deploy.v1.DeployService/DeleteWebhook", [false, false, true, true]),
    (
        "deploy.v1.DeployService/ListWebhookDeliveries",
        [false, false, true, true],
    ),
    (
        "deploy.v1.DeployService/RedeliverWebhookDelivery",
        [false, false, true, true],
    ),
];

#[test]
fn each_organisation_role_may_call_what_the_matrix_says() {
    use capsule::auth::{OrgRole, Permission, declared_permission};
    let pool = capsule::proto::pool();
    let mut declared = Vec::new();
    for service in pool.services().filter(|s| s.full_name().starts_with("capsule.")) {
        for method in service.methods() {
            let Some(name) = declared_permission(&method) else {
                continue;
            };
            let path = format!(
                "{}/{}",
                service.full_name().trim_start_matches("capsule."),
                method.name()
            );
            let permission = Permission::parse(&name).unwrap_or_else(|| panic!("{path}: unknown permission {name:?}"));
            let row = OrgRole::ALL.map(|role| role.grants(permission));
            let expected = ROLE_MATRIX
                .iter()
                .find(|(listed, _)| *listed == path)
                .unwrap_or_else(|| panic!("{path} ({name}) is missing from ROLE_MATRIX"))
                .1;
            assert_eq!(row, expected, "{path} ({name}): viewer, developer, admin, owner");
            declared.push(path);
        }
    }
    for (path, _) in ROLE_MATRIX {
        assert!(declared.iter().any(|d| d == path), "{path} declares no permission");
    }
}
