-- V006__add_deployment_commit
-- Description: the exact commit a deployment builds, with its subject and
-- author, resolved when the deployment is created.
-- Rollback: down.sql drops the columns.

ALTER TABLE deployments
    ADD COLUMN commit_sha VARCHAR(64) NOT NULL DEFAULT '',
    ADD COLUMN commit_message VARCHAR(1024) NOT NULL DEFAULT '',
    ADD COLUMN commit_author VARCHAR(512) NOT NULL DEFAULT '';
