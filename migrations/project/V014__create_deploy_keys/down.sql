ALTER TABLE project_settings DROP COLUMN IF EXISTS webhook_secret_key_id;
DROP TABLE IF EXISTS deploy_keys;
