//! What every gRPC handler needs: field violations, page sizes and tokens,
//! ids, and one mapping of database trouble to statuses.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

/// Bad fields of one request, answered together as INVALID_ARGUMENT with a
/// `google.rpc.BadRequest` detail.
#[derive(Debug, Default)]
pub struct FieldViolations(Vec<(String, String)>);

impl FieldViolations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is bad and what a good value looks like.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was recorded, else the INVALID_ARGUMENT status.
    pub fn check(self) -> Result<(), Status> {
        if self.0.is_empty() {
            return Ok(());
        }
        let message = self
            .0
            .iter()
            .map(|(field, description)| format!("{field}: {description}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut details = ErrorDetails::new();
        for (field, description) in &self.0 {
            details.add_bad_request_violation(field.clone(), description.clone());
        }
        Err(Status::with_error_details(Code::InvalidArgument, message, details))
    }
}

/// True when `value` holds a control character (NUL, BEL, line breaks, …).
pub fn has_control(value: &str) -> bool {
    value.chars().any(char::is_control)
}

/// A required one-line name: trimmed, at most `max_chars` characters, no
/// control characters. Returns it trimmed.
pub fn name(value: &str, field: &str, max_chars: usize, violations: &mut FieldViolations) -> String {
    let name = value.trim().to_owned();
    if name.is_empty() {
        violations.add(field, "is required");
    } else if name.chars().count() > max_chars {
        violations.add(field, format!("must be at most {max_chars} characters"));
    } else if has_control(&name) {
        violations.add(field, "must not contain control characters");
    }
    name
}

/// Free text of at most `max_chars` characters: line breaks and tabs are
/// allowed, other control characters are not.
pub fn text(value: &str, field: &str, max_chars: usize, violations: &mut FieldViolations) {
    if value.chars().count() > max_chars {
        violations.add(field, format!("must be at most {max_chars} characters"));
    } else if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        violations.add(field, "must not contain control characters other than line breaks");
    }
}

/// A single bad field.
pub fn invalid_field(field: &str, description: &str) -> Status {
    let mut violations = FieldViolations::new();
    violations.add(field, description);
    violations
        .check()
        .err()
        .unwrap_or_else(|| Status::invalid_argument(description.to_owned()))
}

/// `page_size`: 0 means `default`; 1..=`max` as given; anything else is a
/// violation.
pub fn page_size(value: i32, default: i64, max: i64, violations: &mut FieldViolations) -> i64 {
    match i64::from(value) {
        0 => default,
        size if (1..=max).contains(&size) => size,
        _ => {
            violations.add("page_size", format!("must be between 1 and {max} (0 for {default})"));
            default
        }
    }
}

/// A position in a list ordered by (time, id), newest first: opaque to
/// clients. Its form is fixed — 8 bytes of microseconds and the 16 of the
/// id, 32 characters of unpadded base64url — so the rule on every
/// `page_token` (that pattern) says exactly which tokens are taken: any
/// string of that form is a position in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub time: DateTime<Utc>,
    pub id: Uuid,
}

impl PageToken {
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.time.timestamp_micros().to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses `page_token`; an empty token is the first page. A token that
    /// does not parse is a violation. A time beyond any row's (a token
    /// made by hand) is taken as the nearest time the database can hold.
    pub fn decode(token: &str, violations: &mut FieldViolations) -> Option<Self> {
        if token.is_empty() {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| <[u8; 24]>::try_from(bytes).ok());
        let Some(bytes) = bytes else {
            violations.add(
                "page_token",
                "is not a token from a previous page; pass next_page_token as returned",
            );
            return None;
        };
        let (micros, id) = bytes.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().unwrap_or_default());
        // Years 1 to 9999: every row's time is inside, and PostgreSQL holds both.
        let (first, last) = (-62_135_596_800_000_000, 253_402_300_799_999_999);
        Some(Self {
            time: DateTime::from_timestamp_micros(micros.clamp(first, last)).unwrap_or_default(),
            id: Uuid::from_slice(id).unwrap_or_default(),
        })
    }
}

/// The fields an update touches: `update_mask` must name at least one, and
/// only fields from `allowed`.
pub fn mask_paths(
    mask: Option<&prost_types::FieldMask>,
    allowed: &[&str],
    violations: &mut FieldViolations,
) -> Vec<String> {
    let paths: Vec<String> = mask.map(|mask| mask.paths.clone()).unwrap_or_default();
    if paths.is_empty() {
        violations.add(
            "update_mask",
            format!("list the fields to change: {}", allowed.join(", ")),
        );
    }
    for path in &paths {
        if !allowed.contains(&path.as_str()) {
            violations.add(
                "update_mask",
                format!("{path:?} cannot be updated; use {}", allowed.join(", ")),
            );
        }
    }
    paths
}

/// The next page's token for a query that asked for `limit + 1` rows: set
/// when the extra row came back, from the last row shown.
pub fn next_page_token<T>(rows: &[T], limit: i64, key: impl Fn(&T) -> (DateTime<Utc>, Uuid)) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match rows.get(limit.wrapping_sub(1)).filter(|_| rows.len() > limit) {
        Some(last) => {
            let (time, id) = key(last);
            PageToken { time, id }.encode()
        }
        None => String::new(),
    }
}

/// Parses a resource id; a malformed one is a violation.
pub fn parse_id(field: &str, value: &str, violations: &mut FieldViolations) -> Uuid {
    match Uuid::parse_str(value) {
        Ok(id) => id,
        Err(_) if value.is_empty() => {
            violations.add(field, "is required");
            Uuid::nil()
        }
        Err(_) => {
            violations.add(field, "must be a UUID such as 0190c3c2-5f1e-7cc0-8b6e-4a1f2d3c4b5a");
            Uuid::nil()
        }
    }
}

/// One required id from a request, parsed once at the boundary: the id, or
/// INVALID_ARGUMENT naming its field. Never a nil id in its place.
pub fn require_id(field: &str, value: &str) -> Result<Uuid, Status> {
    let mut violations = FieldViolations::new();
    let id = parse_id(field, value, &mut violations);
    violations.check()?;
    Ok(id)
}

/// INTERNAL for a fault of the service's, not the caller's: the cause is
/// logged where it happened (within the call's trace) and the caller is
/// told only that it was ours.
#[track_caller]
pub fn internal(cause: impl std::fmt::Display) -> Status {
    let at = std::panic::Location::caller();
    tracing::error!(error = %cause, at = %at, "internal error");
    Status::internal("internal error")
}

/// A protobuf Timestamp.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The largest request message a service decodes (tonic's default is 4
/// MiB): larger ones are refused with OUT_OF_RANGE before any handler runs.
/// The gateway's REST body limit is the same size.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How many follow streams one user keeps open at once in this process:
/// a stream takes a [`StreamSlot`] when it opens and gives it back when it
/// ends, and one more than the limit is RESOURCE_EXHAUSTED naming the
/// setting.
#[derive(Debug)]
pub struct StreamLimit {
    max: u64,
    variable: &'static str,
    open: Mutex<HashMap<Uuid, u64>>,
}

/// One open stream of a user's; dropping it closes it.
#[derive(Debug)]
pub struct StreamSlot {
    limit: Arc<StreamLimit>,
    user: Uuid,
}

impl StreamLimit {
    /// At most `max` streams per user; `variable` is the setting to name.
    pub fn new(max: u64, variable: &'static str) -> Arc<Self> {
        Arc::new(Self {
            max,
            variable,
            open: Mutex::default(),
        })
    }

    /// A slot for one more of `user`'s streams, if the limit allows.
    pub fn take(self: &Arc<Self>, user: Uuid) -> Result<StreamSlot, Status> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| internal("the stream limit's lock is poisoned"))?;
        let count = open.entry(user).or_default();
        if *count >= self.max {
            return Err(Status::resource_exhausted(format!(
                "you already follow {} streams, the limit ({}): close one first",
                self.max, self.variable
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            limit: self.clone(),
            user,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limit.open.lock()
            && let Some(count) = open.get_mut(&self.user)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_a_violation() {
        let token = PageToken {
            time: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        let mut violations = FieldViolations::new();
        assert_eq!(PageToken::decode(&token.encode(), &mut violations), Some(token));
        assert!(violations.is_empty());
        // Any 32 characters of base64url are a position: the rule's pattern
        // is the whole truth.
        assert_eq!(
            PageToken::decode(&"A".repeat(32), &mut violations)
                .unwrap()
                .time
                .timestamp(),
            0
        );
        let mut far = [0u8; 24];
        far[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        let far = PageToken::decode(&URL_SAFE_NO_PAD.encode(far), &mut violations).unwrap();
        assert_eq!(chrono::Datelike::year(&far.time), 9999);
        assert!(violations.is_empty());
        assert_eq!(PageToken::decode("not-a-token!", &mut violations), None);
        let status = violations.check().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("page_token:"));
    }

    #[test]
    fn page_sizes_outside_the_range_are_violations() {
        let mut violations = FieldViolations::new();
        assert_eq!(page_size(0, 20, 100, &mut violations), 20);
        assert_eq!(page_size(100, 20, 100, &mut violations), 100);
        assert!(violations.is_empty());
        for bad in [-1, 101, 1_000_000_000] {
            page_size(bad, 20, 100, &mut violations);
        }
        let status = violations.check().unwrap_err();
        let details = status.get_details_bad_request().unwrap();
        assert_eq!(details.field_violations.len(), 3);
    }

    #[test]
    fn a_users_streams_are_limited_and_a_closed_one_frees_its_slot() {
        let limit = StreamLimit::new(2, "DEPLOY_MAX_STREAMS_PER_USER");
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let first = limit.take(alice).unwrap();
        let _second = limit.take(alice).unwrap();
        let refused = limit.take(alice).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("DEPLOY_MAX_STREAMS_PER_USER"), "{refused:?}");
        assert!(limit.take(bob).is_ok(), "another user's streams count apart");
        drop(first);
        assert!(limit.take(alice).is_ok());
    }
}
