-- V011__index_api_tokens_by_organization
-- Description: an organisation's tokens, newest first, for its admins'
-- list and the limit on live tokens. Built concurrently: sign-ins and
-- token checks go on while it builds. A build that fails leaves an
-- INVALID index behind: drop it with
-- DROP INDEX CONCURRENTLY idx_api_tokens_organization; and apply again.
-- Rollback: down.sql drops the index.

CREATE INDEX CONCURRENTLY idx_api_tokens_organization ON api_tokens (organization_id, created_at DESC)
    WHERE organization_id IS NOT NULL;
