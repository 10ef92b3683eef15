ALTER TABLE projects DROP CONSTRAINT IF EXISTS projects_host_label_shape;

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
