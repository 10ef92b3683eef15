-- V014__create_deploy_keys
-- Description: a project's deploy key, the ed25519 SSH key its ssh://
-- repository is fetched with: the public half in OpenSSH's one-line form,
-- the private half sealed with key_id's key for this project (as
-- variables' values are), one key per project. The push-event webhook
-- secret is sealed the same way from now on: a row with a
-- webhook_secret_key_id holds it sealed, a row without one holds it as it
-- was made until `capsule secrets reencrypt` seals it; sealed, it is
-- longer (nonce, tag, base64), so the column widens (no rewrite: only a
-- varchar's limit grows).
-- Rollback: down.sql drops the table and the column (sealed secrets
-- cannot be read without their key: rotate them after a rollback).

CREATE TABLE deploy_keys (
    project_id UUID PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    fingerprint VARCHAR(128) NOT NULL,
    private_key TEXT NOT NULL,
    key_id VARCHAR(32) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE project_settings ADD COLUMN webhook_secret_key_id VARCHAR(32);
ALTER TABLE project_settings ALTER COLUMN webhook_secret TYPE VARCHAR(256);
