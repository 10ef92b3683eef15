//! The DNS-01 hook: the operator's program that writes and removes the
//! TXT records a CA checks (`DEPLOY_ACME_DNS_HOOK`).
//!
//! It is run as `<hook> present <record name> <value>` before the CA is
//! asked to check, and `<hook> cleanup <record name> <value>` after,
//! never through a shell. The record is `<domain id>.<DEPLOY_ACME_DNS_ZONE>`
//! for a tenant's domain (its owner's `_acme-challenge` CNAME points
//! there), `_acme-challenge.<apps domain>` for the platform's own; the
//! value is the challenge's base64url digest. Its environment is `PATH`
//! and this process's variables whose names start with `ACME_HOOK_`
//! (the DNS provider's credentials), nothing else of the service's. It
//! must exit 0 once the record is published, within 120 seconds. Its
//! output goes to this service's log, not to the tenant.

use std::{path::Path, process::Stdio, time::Duration};

/// How long the hook may take.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether `text` is only what a record name or a DNS-01 value holds:
/// letters, digits, dots, hyphens and underscores — nothing a careless
/// hook could read as more than a word.
fn plain(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Runs the hook; what went wrong, in words a tenant may read.
pub async fn run(hook: &Path, action: &str, record: &str, value: &str) -> Result<(), String> {
    if !plain(record) || record.starts_with('-') || !plain(value) {
        return Err(format!("{record:?} is no DNS name the hook may be given"));
    }
    let child = tokio::process::Command::new(hook)
        .args([action, record, value])
        .env_clear()
        .envs(std::env::vars().filter(|(name, _)| name == "PATH" || name.starts_with("ACME_HOOK_")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            tracing::error!(hook = %hook.display(), error = %err, "the DNS hook cannot start");
            "the platform's DNS hook cannot start; its operator has been told".to_owned()
        })?;
    let output = tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("the platform's DNS hook did not {action} {record} within 120 s"))?
        .map_err(|err| format!("the platform's DNS hook failed: {err}"))?;
    let said = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        tracing::debug!(hook = %hook.display(), action, record, output = %said.trim(), "DNS hook done");
        Ok(())
    } else {
        tracing::warn!(hook = %hook.display(), action, record, status = %output.status, output = %said.trim(), "the DNS hook failed");
        Err(format!(
            "the platform's DNS hook could not {action} the TXT record {record} ({})",
            output.status
        ))
    }
}
