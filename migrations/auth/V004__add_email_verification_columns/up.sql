-- V004__add_email_verification_columns
-- Description: when an address was verified; single-use, expiring tokens
-- for email verification and password reset (stored as SHA-256 hashes);
-- and the outbox the mailer sends from.
-- Rollback: down.sql drops the tables and the column.

ALTER TABLE users ADD COLUMN email_verified_at TIMESTAMPTZ;

CREATE TABLE email_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose VARCHAR(20) NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);

CREATE INDEX idx_email_tokens_user_purpose ON email_tokens (user_id, purpose);

CREATE TABLE email_outbox (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    recipient VARCHAR(255) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    body TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ
);

-- The mailer's queue: unsent mail, oldest first.
CREATE INDEX idx_email_outbox_unsent ON email_outbox (created_at) WHERE sent_at IS NULL;
