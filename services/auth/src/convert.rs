//! Rows of the auth database as the contracts' messages, and roles both
//! ways.

use capsule::{proto::auth::v1 as pb, rpc};

use crate::db::{Preferences, Profile, User};

pub(crate) fn role_name(role: i32) -> Option<&'static str> {
    match pb::Role::try_from(role).ok()? {
        pb::Role::User => Some("user"),
        pb::Role::Admin => Some("admin"),
        pb::Role::Unspecified => None,
    }
}

pub(crate) fn role_proto(role: &str) -> i32 {
    match role {
        "admin" => pb::Role::Admin as i32,
        _ => pb::Role::User as i32,
    }
}

pub(crate) fn user_proto(user: &User, profile: Option<&Profile>) -> pb::User {
    let profile = profile.cloned().unwrap_or_default();
    pb::User {
        id: user.id.to_string(),
        email: user.email.clone(),
        email_verified: user.email_verified,
        role: role_proto(&user.role),
        active: user.is_active,
        profile: Some(pb::Profile {
            name: user.name.clone(),
            avatar_url: profile.avatar_url,
            bio: profile.bio,
        }),
        create_time: Some(rpc::timestamp(user.created_at)),
        update_time: Some(rpc::timestamp(user.updated_at)),
    }
}

pub(crate) fn preferences_proto(preferences: Preferences) -> pb::Preferences {
    pb::Preferences {
        theme: preferences.theme,
        language: preferences.language,
        timezone: preferences.timezone,
        update_time: Some(rpc::timestamp(preferences.updated_at)),
    }
}
