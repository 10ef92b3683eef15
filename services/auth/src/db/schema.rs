//! The auth database's tables, as `migrations/auth` creates them.

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Varchar,
        password_hash -> Varchar,
        name -> Varchar,
        role -> Varchar,
        is_active -> Bool,
        email_verified -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        email_verified_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    user_profiles (user_id) {
        user_id -> Uuid,
        avatar_url -> Varchar,
        bio -> Varchar,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    user_sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        user_agent -> Varchar,
        client_address -> Varchar,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Varchar>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    email_tokens (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        purpose -> Varchar,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    email_outbox (id) {
        id -> Uuid,
        recipient -> Varchar,
        subject -> Varchar,
        body -> Text,
        created_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    user_preferences (user_id) {
        user_id -> Uuid,
        theme -> Varchar,
        language -> Varchar,
        timezone -> Varchar,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Varchar,
        private_key -> Bytea,
        public_key -> Bytea,
        created_at -> Timestamptz,
        retired_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    login_throttles (scope) {
        scope -> Varchar,
        failures -> Int4,
        window_started_at -> Timestamptz,
        locked_until -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> Uuid,
        user_id -> Nullable<Uuid>,
        name -> Varchar,
        token_hash -> Bytea,
        scopes -> Array<Text>,
        project_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
        organization_id -> Nullable<Uuid>,
        created_by -> Nullable<Uuid>,
    }
}

diesel::joinable!(api_tokens -> users (user_id));
diesel::joinable!(user_profiles -> users (user_id));
diesel::joinable!(user_sessions -> users (user_id));
diesel::joinable!(refresh_tokens -> user_sessions (session_id));
diesel::joinable!(user_preferences -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    user_profiles,
    user_sessions,
    refresh_tokens,
    email_tokens,
    email_outbox,
    user_preferences,
    signing_keys,
    login_throttles,
    api_tokens,
);
