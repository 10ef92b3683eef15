-- V004__create_environment_variables_table
-- Description: environment variables of a project. A secret's value is
-- write-only through the API.
-- Rollback: down.sql drops the table.

CREATE TABLE environment_variables (
    project_id UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name VARCHAR(128) NOT NULL,
    value TEXT NOT NULL,
    secret BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

CREATE TRIGGER update_environment_variables_updated_at
    BEFORE UPDATE ON environment_variables
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();
