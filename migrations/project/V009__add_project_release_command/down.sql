ALTER TABLE project_settings DROP COLUMN release_command;
