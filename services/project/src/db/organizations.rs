//! Organisations, their members and invitations.

use capsule::auth::OrgRole;
use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::schema::{organization_invitations, organization_members, organizations, projects};

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = organizations)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = organization_members)]
pub struct Member {
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Member {
    /// The role as stored; the table's CHECK keeps it one of the four.
    pub fn role(&self) -> OrgRole {
        OrgRole::parse(&self.role).unwrap_or(OrgRole::Viewer)
    }
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = organization_invitations)]
pub struct Invitation {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub email: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

pub struct NewInvitation<'a> {
    pub organization_id: Uuid,
    pub email: &'a str,
    pub role: OrgRole,
    pub token_hash: &'a [u8],
    pub invited_by: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Why a membership change was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NoSuchMember,
    /// It would leave the organisation without an owner.
    LastOwner,
}

/// Creates the organisation with `creator` as its owner.
pub fn create(conn: &mut PgConnection, name: &str, creator: Uuid) -> QueryResult<Organization> {
    conn.transaction(|conn| {
        let organization: Organization = diesel::insert_into(organizations::table)
            .values((organizations::name.eq(name), organizations::created_by.eq(creator)))
            .returning(Organization::as_returning())
            .get_result(conn)?;
        diesel::insert_into(organization_members::table)
            .values((
                organization_members::organization_id.eq(organization.id),
                organization_members::user_id.eq(creator),
                organization_members::role.eq(OrgRole::Owner.as_str()),
            ))
            .execute(conn)?;
        Ok(organization)
    })
}

pub fn find(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<Organization>> {
    organizations::table
        .find(id)
        .select(Organization::as_select())
        .first(conn)
        .optional()
}

/// `user_id`'s role in the organisation, if a member.
pub fn role_of(conn: &mut PgConnection, organization_id: Uuid, user_id: Uuid) -> QueryResult<Option<OrgRole>> {
    let role: Option<String> = organization_members::table
        .find((organization_id, user_id))
        .select(organization_members::role)
        .first(conn)
        .optional()?;
    Ok(role.as_deref().and_then(OrgRole::parse))
}

/// The organisations `user_id` belongs to, with the role in each, by name.
pub fn of_user(conn: &mut PgConnection, user_id: Uuid) -> QueryResult<Vec<(Organization, String)>> {
    organizations::table
        .inner_join(organization_members::table)
        .filter(organization_members::user_id.eq(user_id))
        .select((Organization::as_select(), organization_members::role))
        .order((organizations::name, organizations::id))
        .limit(1000)
        .load(conn)
}

/// The members, oldest first.
pub fn members(conn: &mut PgConnection, organization_id: Uuid) -> QueryResult<Vec<Member>> {
    organization_members::table
        .filter(organization_members::organization_id.eq(organization_id))
        .select(Member::as_select())
        .order((organization_members::created_at, organization_members::user_id))
        .limit(1000)
        .load(conn)
}

pub fn invite(conn: &mut PgConnection, new: &NewInvitation<'_>) -> QueryResult<Invitation> {
    diesel::insert_into(organization_invitations::table)
        .values((
            organization_invitations::organization_id.eq(new.organization_id),
            organization_invitations::email.eq(new.email),
            organization_invitations::role.eq(new.role.as_str()),
            organization_invitations::token_hash.eq(new.token_hash),
            organization_invitations::invited_by.eq(new.invited_by),
            organization_invitations::expires_at.eq(new.expires_at),
        ))
        .returning(Invitation::as_returning())
        .get_result(conn)
}

/// Takes back an invitation whose email could not be queued.
pub fn withdraw(conn: &mut PgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::delete(organization_invitations::table.find(id)).execute(conn)
}

/// An organisation's pending invitations (not accepted, not expired),
/// newest first.
pub fn pending(conn: &mut PgConnection, organization_id: Uuid) -> QueryResult<Vec<Invitation>> {
    organization_invitations::table
        .filter(organization_invitations::organization_id.eq(organization_id))
        .filter(organization_invitations::accepted_at.is_null())
        .filter(organization_invitations::expires_at.gt(now))
        .select(Invitation::as_select())
        .order((
            organization_invitations::created_at.desc(),
            organization_invitations::id.desc(),
        ))
        .limit(1000)
        .load(conn)
}

/// Withdraws a pending invitation of `organization_id`; whether there was
/// one.
pub fn withdraw_pending(conn: &mut PgConnection, organization_id: Uuid, id: Uuid) -> QueryResult<bool> {
    diesel::delete(
        organization_invitations::table
            .find(id)
            .filter(organization_invitations::organization_id.eq(organization_id))
            .filter(organization_invitations::accepted_at.is_null()),
    )
    .execute(conn)
    .map(|deleted| deleted > 0)
}

/// Why an invitation was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum NotAccepted {
    /// The token names no live invitation.
    Unknown,
    /// It was sent to another email than the caller's.
    OtherEmail,
}

/// Spends a live invitation sent to `email` for `user_id`: a member with
/// its role (or the membership the user already had).
pub fn accept(
    conn: &mut PgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    email: &str,
) -> QueryResult<Result<Member, NotAccepted>> {
    conn.transaction(|conn| {
        let live = organization_invitations::table
            .filter(organization_invitations::token_hash.eq(token_hash))
            .filter(organization_invitations::accepted_at.is_null())
            .filter(organization_invitations::expires_at.gt(now));
        let invited: Option<String> = live
            .select(organization_invitations::email)
            .for_update()
            .first(conn)
            .optional()?;
        match invited {
            None => return Ok(Err(NotAccepted::Unknown)),
            Some(invited) if !invited.eq_ignore_ascii_case(email) => return Ok(Err(NotAccepted::OtherEmail)),
            Some(_) => {}
        }
        let invitation: Option<(Uuid, String)> = diesel::update(live)
            .set((
                organization_invitations::accepted_at.eq(now),
                organization_invitations::accepted_by.eq(user_id),
            ))
            .returning((
                organization_invitations::organization_id,
                organization_invitations::role,
            ))
            .get_result(conn)
            .optional()?;
        let Some((organization_id, role)) = invitation else {
            return Ok(Err(NotAccepted::Unknown));
        };
        diesel::insert_into(organization_members::table)
            .values((
                organization_members::organization_id.eq(organization_id),
                organization_members::user_id.eq(user_id),
                organization_members::role.eq(role),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        organization_members::table
            .find((organization_id, user_id))
            .select(Member::as_select())
            .first(conn)
            .map(Ok)
    })
}

/// Changes a member's role, or removes the member (`role` `None`), unless
/// that leaves the organisation without an owner. Membership changes of one
/// organisation are serialised on its row, so two owners demoting each
/// other at once cannot both succeed.
pub fn change(
    conn: &mut PgConnection,
    organization_id: Uuid,
    user_id: Uuid,
    role: Option<OrgRole>,
) -> QueryResult<Result<Option<Member>, Refusal>> {
    conn.transaction(|conn| {
        organizations::table
            .find(organization_id)
            .select(organizations::id)
            .for_update()
            .first::<Uuid>(conn)?;
        let Some(current) = organization_members::table
            .find((organization_id, user_id))
            .select(Member::as_select())
            .first(conn)
            .optional()?
        else {
            return Ok(Err(Refusal::NoSuchMember));
        };
        if current.role() == OrgRole::Owner && role != Some(OrgRole::Owner) {
            let owners: i64 = organization_members::table
                .filter(organization_members::organization_id.eq(organization_id))
                .filter(organization_members::role.eq(OrgRole::Owner.as_str()))
                .count()
                .get_result(conn)?;
            if owners <= 1 {
                return Ok(Err(Refusal::LastOwner));
            }
        }
        let target = organization_members::table.find((organization_id, user_id));
        match role {
            Some(role) => diesel::update(target)
                .set(organization_members::role.eq(role.as_str()))
                .returning(Member::as_returning())
                .get_result(conn)
                .map(|member| Ok(Some(member))),
            None => diesel::delete(target).execute(conn).map(|_| Ok(None)),
        }
    })
}

/// Moves a project to `owner` (an organisation's id with `organization_id`
/// set, or a user's). The slug must be free there: a unique violation is
/// the caller's to report.
pub fn transfer(
    conn: &mut PgConnection,
    project_id: Uuid,
    owner: Uuid,
    organization_id: Option<Uuid>,
) -> QueryResult<super::Project> {
    diesel::update(projects::table.find(project_id))
        .set((
            projects::owner_id.eq(owner),
            projects::organization_id.eq(organization_id),
        ))
        .returning(super::Project::as_returning())
        .get_result(conn)
}
