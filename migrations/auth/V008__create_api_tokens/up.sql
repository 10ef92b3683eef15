-- V008__create_api_tokens
-- Description: personal API tokens: a name, the permissions they carry, at
-- most one project, an expiry. Only the SHA-256 of a token is kept;
-- revoking sets revoked_at, so the list keeps what each token was.
-- Rollback: down.sql drops the table.

CREATE TABLE api_tokens (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name VARCHAR(100) NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    scopes TEXT[] NOT NULL,
    project_id UUID,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);

-- A user's tokens, newest first.
CREATE INDEX idx_api_tokens_user ON api_tokens (user_id, created_at DESC);
