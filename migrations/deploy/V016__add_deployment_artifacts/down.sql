ALTER TABLE deployments DROP COLUMN IF EXISTS artifact_digest;
