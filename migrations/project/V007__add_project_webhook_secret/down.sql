DROP INDEX idx_project_settings_auto_deploy;
ALTER TABLE project_settings DROP COLUMN webhook_secret;
