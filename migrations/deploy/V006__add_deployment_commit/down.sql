ALTER TABLE deployments
    DROP COLUMN commit_author,
    DROP COLUMN commit_message,
    DROP COLUMN commit_sha;
