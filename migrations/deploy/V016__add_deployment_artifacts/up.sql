-- V016__add_deployment_artifacts
-- Description: the release a deployment's build made, as runners keep it
-- (`sha256:<hex>` of the packed tree). A rollback takes its target's, so
-- a runner that still has it starts the release without building. NULL
-- until built, and for deployments from before releases were kept.
-- Rollback: down.sql drops the column.

ALTER TABLE deployments ADD COLUMN artifact_digest VARCHAR(71);
