//! What the bridge carries between HTTP and gRPC besides the message, in
//! one table: the headers passed on to the services as metadata, and how a
//! server stream is resumed. The bridge itself knows no feature; a feature
//! that needs a header or a resumable stream is named here.

/// Request headers passed on as gRPC metadata (everything else stays at the
/// edge; the bridge adds `x-request-id` and the client's address itself).
pub const FORWARDED_HEADERS: &[&str] = &[
    // Who calls, with what.
    "authorization",
    "user-agent",
    // Push events from git hosts (`ReceiveGitPush`): the signature over the
    // body, the delivery id that makes a redelivery a no-op, and the kind
    // of event — GitHub, Gitea, GitLab.
    "x-hub-signature-256",
    "x-github-delivery",
    "x-github-event",
    "x-gitea-signature",
    "x-gitea-delivery",
    "x-gitea-event",
    "x-gitlab-token",
    "x-gitlab-event",
    "x-gitlab-event-uuid",
];

/// A streamed message's field that is its Server-Sent Events `id:` (log
/// lines' `sequence`), so a client that reconnects sends it back as
/// `Last-Event-ID`.
pub const EVENT_ID_FIELD: &str = "sequence";

/// A streaming request's field that `Last-Event-ID` fills when the query
/// does not set it (StreamLogs' `after_sequence`): the stream resumes after
/// the last message the client saw.
pub const RESUME_FIELD: &str = "after_sequence";

/// [`RESUME_FIELD`] as the JSON mapping names it in a query string.
pub const RESUME_FIELD_JSON: &str = "afterSequence";
