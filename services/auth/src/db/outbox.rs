//! Single-use email tokens and the outbox.

use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::schema::{email_outbox, email_tokens};

pub fn insert_email_token(
    conn: &mut PgConnection,
    hash: &[u8],
    user_id: Uuid,
    purpose: &str,
    expires_at: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::insert_into(email_tokens::table)
        .values((
            email_tokens::token_hash.eq(hash),
            email_tokens::user_id.eq(user_id),
            email_tokens::purpose.eq(purpose),
            email_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
}

/// Spends a single-use email token; its user when it was live.
pub fn consume_email_token(conn: &mut PgConnection, hash: &[u8], purpose: &str) -> QueryResult<Option<Uuid>> {
    diesel::update(
        email_tokens::table
            .filter(email_tokens::token_hash.eq(hash))
            .filter(email_tokens::purpose.eq(purpose))
            .filter(email_tokens::used_at.is_null())
            .filter(email_tokens::expires_at.gt(now)),
    )
    .set(email_tokens::used_at.eq(now))
    .returning(email_tokens::user_id)
    .get_result(conn)
    .optional()
}

pub fn push_email(conn: &mut PgConnection, recipient: &str, subject: &str, body: &str) -> QueryResult<Uuid> {
    diesel::insert_into(email_outbox::table)
        .values((
            email_outbox::recipient.eq(recipient),
            email_outbox::subject.eq(subject),
            email_outbox::body.eq(body),
        ))
        .returning(email_outbox::id)
        .get_result(conn)
}
