//! Checksums of migrations that change only when behaviour can.

use pg_query::protobuf::Token;
use sha2::{Digest, Sha256};

/// SHA-256 of the SQL's tokens as PostgreSQL's own scanner reads them, one
/// space after each: comments and the whitespace between tokens do not
/// count, so editing a header comment or re-indenting leaves it alone;
/// every token does, with its spelling (a keyword's case, a literal, the
/// text of a function body). SQL the scanner refuses is hashed as it is.
pub fn checksum(sql: &str) -> String {
    let digest = match pg_query::scan(sql) {
        Ok(scan) => {
            let mut hasher = Sha256::new();
            for token in &scan.tokens {
                if matches!(Token::try_from(token.token), Ok(Token::SqlComment | Token::CComment)) {
                    continue;
                }
                let span = usize::try_from(token.start).unwrap_or(0)..usize::try_from(token.end).unwrap_or(0);
                hasher.update(sql.as_bytes().get(span).unwrap_or_default());
                hasher.update(b" ");
            }
            hasher.finalize()
        }
        Err(_) => Sha256::digest(sql.as_bytes()),
    };
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_whitespace_do_not_count_but_tokens_do() {
        let original = "-- V009: add a column\nALTER TABLE t ADD COLUMN c text DEFAULT 'a  b';\n";
        let base = checksum(original);
        for harmless in [
            "-- V009: add a column, for the reports\nALTER TABLE t ADD COLUMN c text DEFAULT 'a  b';\n",
            "ALTER TABLE t\n    ADD COLUMN c text /* shown on the page */ DEFAULT 'a  b';",
            "\n\n  ALTER  TABLE t ADD COLUMN c text DEFAULT 'a  b' ;  -- done",
        ] {
            assert_eq!(checksum(harmless), base, "{harmless}");
        }
        for meaningful in [
            "ALTER TABLE t ADD COLUMN c text DEFAULT 'a b';",
            "ALTER TABLE t ADD COLUMN c varchar DEFAULT 'a  b';",
            "ALTER TABLE t ADD COLUMN c text DEFAULT 'a  b'; SELECT 1;",
            "alter table t add column c text default 'a  b';",
        ] {
            assert_ne!(checksum(meaningful), base, "{meaningful}");
        }
        assert_eq!(checksum(original).len(), 64);
        // SQL the scanner refuses still has a checksum of its own.
        assert_ne!(checksum("SELECT 'unterminated"), checksum("SELECT 'unterminated "));
    }
}
