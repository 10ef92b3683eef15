DROP TABLE refresh_tokens;
DROP TABLE user_sessions;
