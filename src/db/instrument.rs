//! Timing and logging every statement of the process.

use std::time::Duration;

/// Times every statement on every connection of this process (diesel's
/// `Instrumentation`): a latency histogram per statement shape and
/// service, `db_query_duration_seconds`; a warning for statements slower
/// than `<SVC>_DB_SLOW_QUERY_MS` (default 200); the SQL at debug level,
/// bound values only with `CAPSULE_DB_LOG_BINDS=true`; with tracing on, a
/// span per statement (its text, never its bound values) under the
/// request that ran it.
pub fn install_query_instrumentation() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = diesel::connection::set_default_instrumentation(|| Some(Box::new(QueryTimer::default())));
    });
}

#[derive(Default)]
struct QueryTimer {
    service: &'static str,
    slow: Duration,
    log_binds: bool,
    started: Option<std::time::Instant>,
    span: Option<tracing::Span>,
}

impl diesel::connection::Instrumentation for QueryTimer {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        use diesel::connection::InstrumentationEvent as Event;
        match event {
            // The URL holds the password: only the application name is read.
            Event::StartEstablishConnection { url, .. } => {
                self.service = crate::config::ServiceKind::ALL
                    .into_iter()
                    .find(|kind| url.contains(&format!("application_name=capsule-{}", kind.name())))
                    .map_or("other", crate::config::ServiceKind::name);
                let variable = format!("{}_DB_SLOW_QUERY_MS", self.service.to_uppercase());
                let slow_ms = std::env::var(variable).ok().and_then(|v| v.parse().ok()).unwrap_or(200);
                self.slow = Duration::from_millis(slow_ms);
                self.log_binds = std::env::var("CAPSULE_DB_LOG_BINDS").is_ok_and(|v| v == "true");
            }
            Event::StartQuery { .. } => {
                self.started = Some(std::time::Instant::now());
                // Only a sampled trace's statements are spans.
                self.span = if crate::trace::sampled() {
                    let span = tracing::debug_span!(
                        target: crate::trace::TRACE,
                        "db.query",
                        otel.name = tracing::field::Empty,
                        otel.kind = "client",
                        otel.status_code = tracing::field::Empty,
                        db.system.name = "postgresql",
                        db.namespace = self.service,
                        db.query.text = tracing::field::Empty,
                        error.type = tracing::field::Empty,
                    );
                    (!span.is_disabled()).then_some(span)
                } else {
                    None
                };
            }
            Event::FinishQuery { query, error, .. } => {
                let Some(started) = self.started.take() else { return };
                let elapsed = started.elapsed();
                let text = query.to_string();
                let (statement, binds) = text.split_once(" -- binds: ").unwrap_or((text.as_str(), ""));
                if let Some(span) = self.span.take() {
                    span.record("otel.name", statement.split_whitespace().next().unwrap_or("query"));
                    span.record("db.query.text", statement);
                    if let Some(error) = error {
                        span.record("otel.status_code", "error");
                        // The kind only: a message can quote a value.
                        let kind = match error {
                            diesel::result::Error::DatabaseError(kind, _) => format!("{kind:?}"),
                            other => format!("{other:?}")
                                .split(['(', ' '])
                                .next()
                                .unwrap_or("Error")
                                .to_owned(),
                        };
                        span.record("error.type", kind);
                    }
                }
                let shape: String = statement.chars().take(160).collect();
                metrics::histogram!("db_query_duration_seconds", "service" => self.service, "statement" => shape.clone())
                    .record(elapsed.as_secs_f64());
                let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                if elapsed >= self.slow {
                    tracing::warn!(service = self.service, duration_ms, statement = %shape, failed = error.is_some(), "slow query");
                } else if self.log_binds {
                    tracing::debug!(service = self.service, duration_ms, statement = %shape, binds, "query");
                } else {
                    tracing::debug!(service = self.service, duration_ms, statement = %shape, "query");
                }
            }
            _ => {}
        }
    }
}
