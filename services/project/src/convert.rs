//! Rows to messages.

use capsule::{
    auth::OrgRole,
    proto::project::v1::{self as pb, OrganizationRole},
    rpc,
};

use crate::state::Maxima;

use crate::db::{
    Project, Settings, Variable,
    organizations::{Invitation, Member, Organization},
};

pub fn project_proto(project: &Project) -> pb::Project {
    pb::Project {
        id: project.id.to_string(),
        name: project.name.clone(),
        slug: project.slug.clone(),
        description: project.description.clone(),
        owner_id: project.owner_id.to_string(),
        create_time: Some(rpc::timestamp(project.created_at)),
        update_time: Some(rpc::timestamp(project.updated_at)),
        delete_time: project.deleted_at.map(rpc::timestamp),
        purge_time: project.purge_after.map(rpc::timestamp),
        url: capsule::config::app_url(&project.host_label),
        host_label: project.host_label.clone(),
        organization_id: project.organization_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// A variable as users see it: a secret's value is never returned.
pub fn variable_proto(variable: &Variable) -> pb::EnvironmentVariable {
    pb::EnvironmentVariable {
        name: variable.name.clone(),
        value: if variable.secret {
            String::new()
        } else {
            variable.value.clone()
        },
        secret: variable.secret,
        update_time: Some(rpc::timestamp(variable.updated_at)),
    }
}

pub fn settings_proto(settings: &Settings, variables: &[Variable]) -> pb::ProjectSettings {
    pb::ProjectSettings {
        project_id: settings.project_id.to_string(),
        build_command: settings.build_command.clone(),
        start_command: settings.start_command.clone(),
        root_directory: settings.root_directory.clone(),
        branch: settings.branch.clone(),
        auto_deploy: settings.auto_deploy,
        repository_url: settings.repository_url.clone(),
        health_check_path: settings.health_check_path.clone(),
        release_command: settings.release_command.clone(),
        environment_variables: variables.iter().map(variable_proto).collect(),
        update_time: Some(rpc::timestamp(settings.updated_at)),
        build_egress: settings.build_egress,
        app_egress: settings.app_egress,
        resources: Some(resources_proto(settings)),
        process_types: process_types_proto(settings),
        idle_timeout_seconds: u32::try_from(settings.idle_timeout_secs).unwrap_or_default(),
    }
}

fn process_types_proto(settings: &Settings) -> std::collections::HashMap<String, pb::ProcessType> {
    settings
        .process_types()
        .into_iter()
        .map(capsule::schedule::ProcessType::into_entry)
        .collect()
}

fn resources_proto(settings: &Settings) -> pb::Resources {
    let count = |value: i32| u32::try_from(value).unwrap_or_default();
    pb::Resources {
        memory_mb: count(settings.memory_mb),
        cpu_millis: count(settings.cpu_millis),
        processes: count(settings.processes),
        replicas: count(settings.replicas),
    }
}

/// What a deployment of the project runs (no variables), its resources
/// within `maxima`.
pub fn plan_proto(project: &Project, settings: Settings, maxima: &Maxima) -> pb::DeploymentPlan {
    pb::DeploymentPlan {
        resources: Some(maxima.bound(resources_proto(&settings))),
        process_types: process_types_proto(&settings),
        idle_timeout_seconds: u32::try_from(settings.idle_timeout_secs).unwrap_or_default(),
        build_egress: settings.build_egress,
        app_egress: settings.app_egress,
        project: Some(project_proto(project)),
        build_command: settings.build_command,
        start_command: settings.start_command,
        root_directory: settings.root_directory,
        branch: settings.branch,
        repository_url: settings.repository_url,
        health_check_path: settings.health_check_path,
        release_command: settings.release_command,
        environment_variables: Vec::new(),
    }
}

pub fn organization_proto(organization: &Organization, role: OrgRole) -> pb::Organization {
    pb::Organization {
        id: organization.id.to_string(),
        name: organization.name.clone(),
        create_time: Some(rpc::timestamp(organization.created_at)),
        role: role.to_proto().into(),
    }
}

pub fn member_proto(member: &Member) -> pb::Member {
    pb::Member {
        organization_id: member.organization_id.to_string(),
        user_id: member.user_id.to_string(),
        role: member.role().to_proto().into(),
        create_time: Some(rpc::timestamp(member.created_at)),
        update_time: Some(rpc::timestamp(member.updated_at)),
    }
}

pub fn invitation_proto(invitation: &Invitation) -> pb::Invitation {
    pb::Invitation {
        id: invitation.id.to_string(),
        organization_id: invitation.organization_id.to_string(),
        email: invitation.email.clone(),
        role: OrgRole::parse(&invitation.role)
            .map_or(OrganizationRole::Unspecified, OrgRole::to_proto)
            .into(),
        create_time: Some(rpc::timestamp(invitation.created_at)),
        expire_time: Some(rpc::timestamp(invitation.expires_at)),
    }
}
