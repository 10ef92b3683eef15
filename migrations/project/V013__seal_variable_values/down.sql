ALTER TABLE environment_variables DROP COLUMN IF EXISTS key_id;
