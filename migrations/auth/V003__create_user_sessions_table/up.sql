-- V003__create_user_sessions_table
-- Description: sessions (one per sign-in) and their refresh tokens. Refresh
-- tokens are stored only as SHA-256 hashes and rotated on every use; a
-- session is the family of its tokens, so presenting a spent token revokes
-- the whole session.
-- Rollback: down.sql drops both tables.

CREATE TABLE user_sessions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_agent VARCHAR(512) NOT NULL DEFAULT '',
    client_address VARCHAR(64) NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ,
    revoked_reason VARCHAR(64)
);

-- A user's live sessions (listing, logout everywhere).
CREATE INDEX idx_user_sessions_user_live ON user_sessions (user_id, created_at DESC) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES user_sessions (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);

CREATE INDEX idx_refresh_tokens_session ON refresh_tokens (session_id);
