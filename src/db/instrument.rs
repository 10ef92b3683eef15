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
        // Each connection keeps the histograms it records into: the
        // recorder must be in place before the first statement.
        crate::telemetry::metrics_handle();
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
    /// This connection's latency histograms by statement shape, found by
    /// name and labels once each (at most `MAX_SHAPES` kept).
    histograms: std::collections::HashMap<String, metrics::Histogram>,
}

const MAX_SHAPES: usize = 256;

/// Collects a statement's text and stops where its bound values begin
/// (diesel writes them after `" -- binds: "`), so they are not formatted
/// when nothing will show them.
struct WithoutBinds(String);

impl std::fmt::Write for WithoutBinds {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        if text.starts_with(BINDS) {
            return Err(std::fmt::Error);
        }
        self.0.push_str(text);
        Ok(())
    }
}

const BINDS: &str = " -- binds: ";

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
                let text = if self.log_binds {
                    query.to_string()
                } else {
                    let mut text = WithoutBinds(String::with_capacity(256));
                    // Stopped on purpose before the binds.
                    let _ = std::fmt::write(&mut text, format_args!("{query}"));
                    text.0
                };
                let (statement, binds) = text.split_once(BINDS).unwrap_or((text.as_str(), ""));
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
                let shape = match statement.char_indices().nth(160) {
                    Some((end, _)) => &statement[..end],
                    None => statement,
                };
                match self.histograms.get(shape) {
                    Some(histogram) => histogram.record(elapsed.as_secs_f64()),
                    None => {
                        let histogram = metrics::histogram!("db_query_duration_seconds", "service" => self.service, "statement" => shape.to_owned());
                        histogram.record(elapsed.as_secs_f64());
                        if self.histograms.len() < MAX_SHAPES {
                            self.histograms.insert(shape.to_owned(), histogram);
                        }
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::WithoutBinds;

    #[test]
    fn a_statement_is_read_without_its_bound_values() {
        let query = diesel::sql_query("SELECT $1").bind::<diesel::sql_types::Text, _>("a secret");
        let debug = diesel::debug_query::<diesel::pg::Pg, _>(&query);
        assert!(debug.to_string().contains("a secret"));
        let mut text = WithoutBinds(String::new());
        let stopped = std::fmt::write(&mut text, format_args!("{debug}"));
        assert!(stopped.is_err());
        assert_eq!(text.0, "SELECT $1");
    }
}
