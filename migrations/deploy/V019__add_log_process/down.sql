ALTER TABLE deployment_logs DROP COLUMN IF EXISTS process;
