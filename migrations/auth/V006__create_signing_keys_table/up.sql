-- V006__create_signing_keys_table
-- Description: the Ed25519 keys that sign access tokens. The newest active
-- key signs; retired keys stay published until the tokens they signed have
-- expired.
-- Rollback: down.sql drops the table.

CREATE TABLE signing_keys (
    kid VARCHAR(64) PRIMARY KEY,
    private_key BYTEA NOT NULL,
    public_key BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at TIMESTAMPTZ
);
