ALTER TABLE project_settings
    DROP COLUMN IF EXISTS build_egress,
    DROP COLUMN IF EXISTS app_egress,
    DROP COLUMN IF EXISTS memory_mb,
    DROP COLUMN IF EXISTS cpu_millis,
    DROP COLUMN IF EXISTS processes;
