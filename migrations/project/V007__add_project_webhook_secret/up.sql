-- V007__add_project_webhook_secret
-- Description: the secret that git push events for a project are signed
-- with (HMAC-SHA256); empty until the owner makes one. Auto-deploying
-- projects are listed by the deploy service's poller.
-- Rollback: down.sql drops the column and index.

ALTER TABLE project_settings ADD COLUMN webhook_secret VARCHAR(128) NOT NULL DEFAULT '';

CREATE INDEX idx_project_settings_auto_deploy ON project_settings (project_id)
    WHERE auto_deploy AND repository_url <> '';
