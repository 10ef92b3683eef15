-- V010__add_organization_api_tokens
-- Description: API tokens owned by an organisation instead of a user, for
-- a team's CI: organization_id names the owner (the project service,
-- which keeps the organisations, decides who may manage them), created_by
-- the member who made it, for the record only: the token outlives that
-- member's membership. Every token has exactly one owner, a user or an
-- organisation (checked for new rows; every existing row has a user).
-- Rollback: down.sql deletes the organisations' tokens and the columns.

ALTER TABLE api_tokens ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE api_tokens ADD COLUMN organization_id UUID;
ALTER TABLE api_tokens ADD COLUMN created_by UUID;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_one_owner
    CHECK ((user_id IS NULL) <> (organization_id IS NULL)) NOT VALID;
