-- V013__index_deployments_for_fair_claims
-- Description: when each owner was last served (the newest start of the
-- owner's deployments), which a fair claim reads for every queued
-- deployment. Built concurrently: claims and deployments go on while it
-- builds. A build that fails leaves an INVALID index behind: drop it with
-- DROP INDEX CONCURRENTLY idx_deployments_owner_started; and apply again.
-- Rollback: down.sql drops the index.

CREATE INDEX CONCURRENTLY idx_deployments_owner_started ON deployments (owner_id, started_at DESC)
    WHERE started_at IS NOT NULL;
