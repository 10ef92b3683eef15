-- V006__add_project_host_label
-- Description: every project's globally unique host label: its app is served
-- at <label>.<apps domain>. The slug when no other project has it as a
-- label, else the slug plus a short suffix; never changes afterwards.
-- Rollback: down.sql drops the trigger, function, index and column.

ALTER TABLE projects ADD COLUMN host_label VARCHAR(63);

UPDATE projects SET host_label = left(slug, 54) || '-' || left(replace(id::text, '-', ''), 8);

ALTER TABLE projects ALTER COLUMN host_label SET NOT NULL;

CREATE UNIQUE INDEX idx_projects_host_label ON projects (host_label);

CREATE OR REPLACE FUNCTION assign_project_host_label()
RETURNS TRIGGER AS $$
BEGIN
    IF NEW.host_label IS NULL THEN
        IF EXISTS (SELECT 1 FROM projects WHERE host_label = NEW.slug) THEN
            NEW.host_label := left(NEW.slug, 54) || '-' || substr(md5(random()::text), 1, 8);
        ELSE
            NEW.host_label := NEW.slug;
        END IF;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER projects_assign_host_label
    BEFORE INSERT ON projects
    FOR EACH ROW
    EXECUTE FUNCTION assign_project_host_label();
