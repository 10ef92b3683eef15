//! The signed-in user's own record: profile and preferences.

use capsule::{
    proto::auth::v1 as pb,
    rpc::{self, FieldViolations},
};
use tonic::{Request, Response, Status};

use crate::{
    db::{Preferences, PreferencesChanges, Profile, ProfileChanges, User},
    validate,
};

use crate::{convert::preferences_proto, state::AuthServiceApi};

pub(super) async fn get_me(
    api: &AuthServiceApi,
    request: Request<pb::GetMeRequest>,
) -> Result<Response<pb::User>, Status> {
    let (_, _, user) = api.live_caller(&request).await?;
    Ok(Response::new(api.load_user(user.id).await?))
}

pub(super) async fn update_profile(
    api: &AuthServiceApi,
    request: Request<pb::UpdateProfileRequest>,
) -> Result<Response<pb::Profile>, Status> {
    let (_, _, user) = api.live_caller(&request).await?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let paths = rpc::mask_paths(
        body.update_mask.as_ref(),
        &["name", "avatar_url", "bio"],
        &mut violations,
    );
    let profile = body.profile.unwrap_or_default();
    let mut name = None;
    let mut changes = ProfileChanges::default();
    for path in &paths {
        match path.as_str() {
            "name" => name = Some(validate::name(&profile.name, "profile.name", &mut violations)),
            "avatar_url" => {
                validate::avatar_url(&profile.avatar_url, "profile.avatar_url", &mut violations);
                changes.avatar_url = Some(profile.avatar_url.clone());
            }
            "bio" => {
                validate::bio(&profile.bio, "profile.bio", &mut violations);
                changes.bio = Some(profile.bio.clone());
            }
            _ => {}
        }
    }
    violations.check()?;
    let user_id = user.id;
    let (user, profile) = api
        .inner
        .db
        .run(move |conn| {
            diesel::Connection::transaction(conn, |conn| {
                if let Some(name) = &name {
                    User::set_name(conn, user_id, name)?;
                }
                Profile::update(conn, user_id, &changes)?;
                User::find(conn, user_id)?.ok_or(diesel::result::Error::NotFound)
            })
        })
        .await?;
    let profile = profile.unwrap_or_default();
    Ok(Response::new(pb::Profile {
        name: user.name,
        avatar_url: profile.avatar_url,
        bio: profile.bio,
    }))
}

pub(super) async fn get_public_profile(
    api: &AuthServiceApi,
    request: Request<pb::GetPublicProfileRequest>,
) -> Result<Response<pb::PublicProfile>, Status> {
    let mut violations = FieldViolations::new();
    let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
    violations.check()?;
    let found = api.inner.db.run(move |conn| User::find(conn, user_id)).await?;
    let (user, profile) = found
        .filter(|(user, _)| user.is_active)
        .ok_or_else(|| Status::not_found("no such user"))?;
    let profile = profile.unwrap_or_default();
    Ok(Response::new(pb::PublicProfile {
        user_id: user.id.to_string(),
        name: user.name,
        avatar_url: profile.avatar_url,
        bio: profile.bio,
    }))
}

pub(super) async fn get_preferences(
    api: &AuthServiceApi,
    request: Request<pb::GetPreferencesRequest>,
) -> Result<Response<pb::Preferences>, Status> {
    let (_, _, user) = api.live_caller(&request).await?;
    let preferences = api.inner.db.run(move |conn| Preferences::get(conn, user.id)).await?;
    Ok(Response::new(preferences_proto(preferences)))
}

pub(super) async fn update_preferences(
    api: &AuthServiceApi,
    request: Request<pb::UpdatePreferencesRequest>,
) -> Result<Response<pb::Preferences>, Status> {
    let (_, _, user) = api.live_caller(&request).await?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let paths = rpc::mask_paths(
        body.update_mask.as_ref(),
        &["theme", "language", "timezone"],
        &mut violations,
    );
    let wanted = body.preferences.unwrap_or_default();
    let mut changes = PreferencesChanges::default();
    for path in &paths {
        match path.as_str() {
            "theme" => {
                validate::theme(&wanted.theme, "preferences.theme", &mut violations);
                changes.theme = Some(wanted.theme.clone());
            }
            "language" => {
                validate::language(&wanted.language, "preferences.language", &mut violations);
                changes.language = Some(wanted.language.clone());
            }
            "timezone" => {
                validate::timezone(&wanted.timezone, "preferences.timezone", &mut violations);
                changes.timezone = Some(wanted.timezone.clone());
            }
            _ => {}
        }
    }
    violations.check()?;
    let preferences = api
        .inner
        .db
        .run(move |conn| Preferences::update(conn, user.id, &changes))
        .await?;
    Ok(Response::new(preferences_proto(preferences)))
}
