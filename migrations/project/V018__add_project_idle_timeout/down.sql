ALTER TABLE project_settings DROP COLUMN IF EXISTS idle_timeout_secs;
