-- V003__add_project_settings
-- Description: how a project is built and run, one row per project.
-- Rollback: down.sql drops the table.

CREATE TABLE project_settings (
    project_id UUID PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    build_command VARCHAR(4096) NOT NULL DEFAULT '',
    start_command VARCHAR(4096) NOT NULL DEFAULT '',
    root_directory VARCHAR(1024) NOT NULL DEFAULT '',
    branch VARCHAR(255) NOT NULL DEFAULT 'main',
    auto_deploy BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TRIGGER update_project_settings_updated_at
    BEFORE UPDATE ON project_settings
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();
