-- V009__create_audit_events
-- Description: the auth service's audit trail: one row per change
-- (who, what, to what, when, from where, by which request). Append-only:
-- a trigger refuses UPDATE, DELETE and TRUNCATE, so not even a bug in this
-- service can rewrite the past. The same table exists in every service's
-- database (capsule::audit).
-- Rollback: down.sql drops the table, its trigger and function.

CREATE TABLE audit_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor_id UUID,
    actor_token_id UUID,
    action VARCHAR(64) NOT NULL,
    target VARCHAR(200) NOT NULL,
    organization_id UUID,
    project_id UUID,
    client_address VARCHAR(64) NOT NULL DEFAULT '',
    request_id VARCHAR(64) NOT NULL DEFAULT '',
    details JSONB NOT NULL DEFAULT '{}'
);

-- An organisation's, a project's and an actor's events, newest first.
CREATE INDEX idx_audit_events_organization ON audit_events (organization_id, id DESC)
    WHERE organization_id IS NOT NULL;
CREATE INDEX idx_audit_events_project ON audit_events (project_id, id DESC)
    WHERE project_id IS NOT NULL;
CREATE INDEX idx_audit_events_actor ON audit_events (actor_id, id DESC);

CREATE FUNCTION audit_events_append_only() RETURNS TRIGGER AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION audit_events_append_only();
