-- V018__add_replicas
-- Description: where a live deployment runs. Each row is one runner's
-- copy of the app, held under a lease its heartbeats renew; the gateway
-- routes only to rows with an upstream and a lease that has not run out,
-- and a runner may claim a live deployment that has fewer such rows than
-- it asks for (its release started without a build). One row per runner
-- and deployment: replicas spread over runners. Live deployments of the
-- previous release become one replica each, on the runner that runs them.
-- A NOTIFY on every change tells the gateway's route watch at once.
-- Rollback: down.sql drops the table; the previous release routes by
-- deployments.upstream, which is still written.

CREATE TABLE replicas (
    deployment_id UUID NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    runner_id VARCHAR(128) NOT NULL,
    upstream VARCHAR(255) NOT NULL DEFAULT '',
    lease_expires_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, runner_id)
);

INSERT INTO replicas (deployment_id, runner_id, upstream, lease_expires_at)
SELECT id, runner_id, upstream, COALESCE(lease_expires_at, now())
FROM deployments
WHERE state = 'live' AND upstream <> '' AND runner_id IS NOT NULL;

CREATE FUNCTION notify_replica_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('deployment_states', COALESCE(NEW.deployment_id, OLD.deployment_id)::text || ':replica');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER replicas_notify
    AFTER INSERT OR DELETE OR UPDATE OF upstream ON replicas
    FOR EACH ROW EXECUTE FUNCTION notify_replica_change();
