DROP TABLE deployment_logs;
DROP FUNCTION notify_deployment_log();
ALTER TABLE deployments DROP COLUMN log_sequence;
