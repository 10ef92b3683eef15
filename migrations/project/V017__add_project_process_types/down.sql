ALTER TABLE project_settings DROP COLUMN IF EXISTS process_types;
