-- V004__add_deployment_owner_and_notifications
-- Description: the owner of the deployed project (copied at creation, so
-- access checks need no call to the project service), and NOTIFY on state
-- changes and on queueing, so log followers and runners wake without
-- polling.
-- Rollback: down.sql drops the triggers, functions and column.

ALTER TABLE deployments ADD COLUMN owner_id UUID;

CREATE OR REPLACE FUNCTION notify_deployment_state()
RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify('deployment_states', NEW.id::text || ':' || NEW.state);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER deployments_state_notify
    AFTER INSERT OR UPDATE OF state ON deployments
    FOR EACH ROW
    EXECUTE FUNCTION notify_deployment_state();
