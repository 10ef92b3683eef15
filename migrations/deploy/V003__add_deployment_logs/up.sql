-- V003__add_deployment_logs
-- Description: append-only log lines per deployment with gapless sequence
-- numbers (taken from deployments.log_sequence under the row lock), and a
-- NOTIFY on every insert so followers tail without polling.
-- Rollback: down.sql drops the table, trigger, function and column.

ALTER TABLE deployments ADD COLUMN log_sequence BIGINT NOT NULL DEFAULT 0;

CREATE TABLE deployment_logs (
    deployment_id UUID NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    sequence BIGINT NOT NULL,
    stream VARCHAR(10) NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    line TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, sequence)
);

CREATE OR REPLACE FUNCTION notify_deployment_log()
RETURNS TRIGGER AS $$
BEGIN
    PERFORM pg_notify('deployment_logs', NEW.deployment_id::text || ':' || NEW.sequence::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER deployment_logs_notify
    AFTER INSERT ON deployment_logs
    FOR EACH ROW
    EXECUTE FUNCTION notify_deployment_log();
