DROP TRIGGER deployments_state_notify ON deployments;
DROP FUNCTION notify_deployment_state();
ALTER TABLE deployments DROP COLUMN owner_id;
