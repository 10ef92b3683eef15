ALTER TABLE project_settings
    DROP COLUMN health_check_path,
    DROP COLUMN repository_url;
