//! The deploy database's tables, as `migrations/deploy` creates them.

diesel::table! {
    deployments (id) {
        id -> Uuid,
        project_id -> Uuid,
        creator_id -> Uuid,
        state -> Varchar,
        source_ref -> Varchar,
        environment -> Varchar,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        snapshot -> Jsonb,
        rollback_of -> Nullable<Uuid>,
        status_message -> Varchar,
        exit_code -> Nullable<Int4>,
        runner_id -> Nullable<Varchar>,
        lease_expires_at -> Nullable<Timestamptz>,
        cancel_requested -> Bool,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        log_sequence -> Int8,
        owner_id -> Nullable<Uuid>,
        logs_pruned_at -> Nullable<Timestamptz>,
        commit_sha -> Varchar,
        commit_message -> Varchar,
        commit_author -> Varchar,
        host_label -> Varchar,
        upstream -> Varchar,
        artifact_digest -> Nullable<Varchar>,
    }
}

diesel::table! {
    deployment_egress (deployment_id, phase, host, port) {
        deployment_id -> Uuid,
        phase -> Varchar,
        host -> Varchar,
        port -> Int4,
        connections -> Int8,
        bytes_sent -> Int8,
        bytes_received -> Int8,
        refusals -> Int8,
        refusal_reason -> Varchar,
        failures -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    build_caches (project_id) {
        project_id -> Uuid,
        generation -> Int8,
        cleared_at -> Timestamptz,
    }
}

diesel::table! {
    sandbox_slots (project_id) {
        project_id -> Uuid,
        slot -> Int4,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    runners (id) {
        id -> Uuid,
        name -> Varchar,
        token_hash -> Bytea,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        last_seen_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    deployment_logs (deployment_id, sequence) {
        deployment_id -> Uuid,
        sequence -> Int8,
        stream -> Varchar,
        line -> Text,
        created_at -> Timestamptz,
        runtime -> Bool,
        process -> Varchar,
    }
}

diesel::table! {
    source_watches (project_id) {
        project_id -> Uuid,
        last_sha -> Varchar,
        checked_at -> Timestamptz,
    }
}

diesel::table! {
    push_deliveries (project_id, delivery_id) {
        project_id -> Uuid,
        delivery_id -> Varchar,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Uuid,
        project_id -> Nullable<Uuid>,
        organization_id -> Nullable<Uuid>,
        url -> Varchar,
        secret -> Varchar,
        events -> Array<Text>,
        created_by -> Uuid,
        created_at -> Timestamptz,
        key_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        webhook_id -> Uuid,
        event -> Varchar,
        deployment_id -> Nullable<Uuid>,
        payload -> Jsonb,
        state -> Varchar,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_attempts (delivery_id, attempt) {
        delivery_id -> Uuid,
        attempt -> Int4,
        attempted_at -> Timestamptz,
        status_code -> Nullable<Int4>,
        error -> Varchar,
        duration_ms -> Int4,
    }
}

diesel::table! {
    replicas (deployment_id, runner_id) {
        deployment_id -> Uuid,
        runner_id -> Varchar,
        upstream -> Varchar,
        lease_expires_at -> Timestamptz,
        started_at -> Timestamptz,
    }
}

diesel::table! {
    runs (id) {
        id -> Uuid,
        project_id -> Uuid,
        deployment_id -> Uuid,
        environment -> Varchar,
        kind -> Varchar,
        name -> Varchar,
        command -> Text,
        state -> Varchar,
        exit_code -> Nullable<Int4>,
        status_message -> Varchar,
        time_limit_secs -> Int4,
        creator_id -> Nullable<Uuid>,
        runner_id -> Nullable<Varchar>,
        scheduled_for -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    cron_slots (project_id, environment, name) {
        project_id -> Uuid,
        environment -> Varchar,
        name -> Varchar,
        last_due -> Timestamptz,
    }
}

diesel::table! {
    domains (id) {
        id -> Uuid,
        project_id -> Uuid,
        environment -> Varchar,
        name -> Varchar,
        challenge -> Varchar,
        status -> Varchar,
        status_message -> Varchar,
        redirect_https -> Bool,
        hsts_max_age_secs -> Int4,
        certificate_pem -> Nullable<Text>,
        key_sealed -> Nullable<Text>,
        key_id -> Nullable<Varchar>,
        not_after -> Nullable<Timestamptz>,
        renew_at -> Nullable<Timestamptz>,
        order_url -> Nullable<Varchar>,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        order_lease_until -> Nullable<Timestamptz>,
        creator_id -> Nullable<Uuid>,
        organization_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    acme_challenges (token) {
        token -> Varchar,
        domain_id -> Uuid,
        name -> Varchar,
        kind -> Varchar,
        key_authorization -> Varchar,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    acme_accounts (directory) {
        directory -> Varchar,
        credentials_sealed -> Text,
        key_id -> Varchar,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    app_databases (id) {
        id -> Uuid,
        project_id -> Uuid,
        environment -> Varchar,
        name -> Varchar,
        password_sealed -> Text,
        key_id -> Varchar,
        connection_limit -> Int4,
        statement_timeout_secs -> Int4,
        ready_at -> Nullable<Timestamptz>,
        next_backup_at -> Timestamptz,
        backup_lease_until -> Nullable<Timestamptz>,
        creator_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    app_database_backups (id) {
        id -> Uuid,
        database_id -> Uuid,
        project_id -> Uuid,
        environment -> Varchar,
        reason -> Varchar,
        size_bytes -> Int8,
        digest -> Varchar,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    previews (project_id, number) {
        project_id -> Uuid,
        number -> Int4,
        environment -> Varchar,
        head_sha -> Varchar,
        opened_at -> Timestamptz,
    }
}

diesel::joinable!(deployment_logs -> deployments (deployment_id));
diesel::joinable!(runs -> deployments (deployment_id));
diesel::joinable!(acme_challenges -> domains (domain_id));
diesel::joinable!(replicas -> deployments (deployment_id));
diesel::joinable!(deployment_egress -> deployments (deployment_id));
diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhook_attempts -> webhook_deliveries (delivery_id));
diesel::joinable!(app_database_backups -> app_databases (database_id));

diesel::allow_tables_to_appear_in_same_query!(
    deployments,
    deployment_logs,
    deployment_egress,
    replicas,
    runs,
    cron_slots,
    domains,
    acme_challenges,
    acme_accounts,
    source_watches,
    push_deliveries,
    webhooks,
    webhook_deliveries,
    webhook_attempts,
    app_databases,
    app_database_backups,
    previews
);
