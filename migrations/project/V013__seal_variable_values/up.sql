-- V013__seal_variable_values
-- Description: variables' values sealed at rest. A row with a key_id holds
-- in value the nonce and ciphertext (base64) that key sealed for this
-- project and name; a row without one, written before, holds the value as
-- it was given until `capsule secrets reencrypt` seals it.
-- Rollback: down.sql drops the column (sealed values cannot be read
-- without their key: reencrypt them to plain text first, or restore).

ALTER TABLE environment_variables ADD COLUMN key_id VARCHAR(32);
