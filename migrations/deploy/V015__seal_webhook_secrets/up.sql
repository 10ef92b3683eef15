-- V015__seal_webhook_secrets
-- Description: webhooks' signing secrets sealed at rest. A row with a
-- key_id holds in secret the nonce and ciphertext (base64) that key
-- sealed for the webhook's project or organisation (longer than the
-- secret itself: the column widens); a row without one, written before,
-- holds the secret as made until `capsule secrets reencrypt` seals it.
-- Rollback: down.sql drops the column (the width stays).

ALTER TABLE webhooks ADD COLUMN key_id VARCHAR(32);
ALTER TABLE webhooks ALTER COLUMN secret TYPE VARCHAR(512);
