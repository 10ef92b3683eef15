-- V012__reserve_host_labels
-- Description: host labels that cannot be mistaken for another host. A
-- label is the slug unless the slug is taken or reserved (names an
-- operator gives its own hosts: api, www, admin …), and then the slug cut
-- to 54 characters, its trailing hyphens dropped, a hyphen and eight hex
-- digits: never two hyphens in a row, never one at the end, so
-- "<label>--<environment>" (another environment's host) is no label. New
-- rows are held to that shape; existing ones are not checked (NOT VALID).
-- Rollback: down.sql restores V006's function and drops the constraint.

CREATE OR REPLACE FUNCTION assign_project_host_label()
RETURNS TRIGGER AS $$
BEGIN
    IF NEW.host_label IS NULL THEN
        IF NEW.slug IN (
            'admin', 'api', 'app', 'apps', 'assets', 'auth', 'capsule', 'cdn', 'console', 'dashboard',
            'docs', 'gateway', 'grpc', 'internal', 'localhost', 'login', 'mail', 'metrics', 'static',
            'status', 'www'
        ) OR EXISTS (SELECT 1 FROM projects WHERE host_label = NEW.slug) THEN
            NEW.host_label := rtrim(left(NEW.slug, 54), '-') || '-' || substr(md5(random()::text), 1, 8);
        ELSE
            NEW.host_label := NEW.slug;
        END IF;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

ALTER TABLE projects ADD CONSTRAINT projects_host_label_shape
    CHECK (host_label ~ '^[a-z0-9]+(-[a-z0-9]+)*$') NOT VALID;
