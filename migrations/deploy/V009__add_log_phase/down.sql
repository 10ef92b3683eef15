ALTER TABLE deployment_logs DROP COLUMN runtime;
