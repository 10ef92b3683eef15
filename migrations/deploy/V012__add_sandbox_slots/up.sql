-- V012__add_sandbox_slots
-- Description: each project's sandbox slot: runners run a project's
-- commands as uid/gid DEPLOY_SANDBOX_UID_BASE + slot, so no two projects
-- share a user. A slot is taken at a project's first claim and never given
-- to another project, even after the project is gone (files or processes
-- of the old owner could still hold the uid). Slot 0 is no project's: the
-- runner's start-up check uses it.
-- Rollback: down.sql drops the table.

CREATE TABLE sandbox_slots (
    project_id UUID PRIMARY KEY,
    slot INTEGER GENERATED ALWAYS AS IDENTITY (START WITH 1 MINVALUE 1) UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
