DELETE FROM api_tokens WHERE user_id IS NULL;
ALTER TABLE api_tokens DROP CONSTRAINT IF EXISTS api_tokens_one_owner;
ALTER TABLE api_tokens DROP COLUMN IF EXISTS created_by;
ALTER TABLE api_tokens DROP COLUMN IF EXISTS organization_id;
ALTER TABLE api_tokens ALTER COLUMN user_id SET NOT NULL;
