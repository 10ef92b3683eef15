//! The project database's tables, as `migrations/project` creates them.

diesel::table! {
    projects (id) {
        id -> Uuid,
        name -> Varchar,
        description -> Text,
        owner_id -> Uuid,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        slug -> Varchar,
        deleted_at -> Nullable<Timestamptz>,
        purge_after -> Nullable<Timestamptz>,
        host_label -> Varchar,
        organization_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    project_settings (project_id) {
        project_id -> Uuid,
        build_command -> Varchar,
        start_command -> Varchar,
        root_directory -> Varchar,
        branch -> Varchar,
        auto_deploy -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        repository_url -> Varchar,
        health_check_path -> Varchar,
        webhook_secret -> Varchar,
        release_command -> Varchar,
        webhook_secret_key_id -> Nullable<Varchar>,
        build_egress -> Bool,
        app_egress -> Bool,
        memory_mb -> Int4,
        cpu_millis -> Int4,
        processes -> Int4,
        replicas -> Int4,
        process_types -> Jsonb,
        idle_timeout_secs -> Int4,
    }
}

diesel::table! {
    deploy_keys (project_id) {
        project_id -> Uuid,
        public_key -> Text,
        fingerprint -> Varchar,
        private_key -> Text,
        key_id -> Varchar,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    environment_variables (project_id, name) {
        project_id -> Uuid,
        name -> Varchar,
        value -> Text,
        secret -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        key_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    organizations (id) {
        id -> Uuid,
        name -> Varchar,
        created_by -> Uuid,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    organization_members (organization_id, user_id) {
        organization_id -> Uuid,
        user_id -> Uuid,
        role -> Varchar,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    organization_invitations (id) {
        id -> Uuid,
        organization_id -> Uuid,
        email -> Varchar,
        role -> Varchar,
        token_hash -> Bytea,
        invited_by -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        accepted_at -> Nullable<Timestamptz>,
        accepted_by -> Nullable<Uuid>,
    }
}

diesel::joinable!(organization_members -> organizations (organization_id));
diesel::joinable!(organization_invitations -> organizations (organization_id));
diesel::joinable!(project_settings -> projects (project_id));
diesel::joinable!(environment_variables -> projects (project_id));
diesel::joinable!(deploy_keys -> projects (project_id));

diesel::allow_tables_to_appear_in_same_query!(
    projects,
    deploy_keys,
    project_settings,
    environment_variables,
    organizations,
    organization_members,
    organization_invitations
);
