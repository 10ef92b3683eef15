//! A deployment's egress record: every destination its sandbox asked for,
//! with connections, bytes each way, and refusals with their reason.

use std::{collections::BTreeMap, sync::Mutex};

/// One destination, `host:port` as the client named it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Destination {
    pub connections: u64,
    /// Bytes the sandbox sent, and received.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Attempts the guard refused, and why.
    pub refused: u64,
    pub why: Option<String>,
    /// Attempts allowed that no address accepted.
    pub failed: u64,
}

/// Destinations one record names one by one; the rest are counted
/// together, so that a tenant asking for endless names costs the runner
/// nothing more.
const MAX_DESTINATIONS: usize = 256;
/// Where the rest are counted.
const OTHERS: &str = "(other destinations)";

#[derive(Debug, Default)]
pub struct Record {
    destinations: Mutex<BTreeMap<(String, u16), Destination>>,
}

impl Record {
    fn with(&self, host: &str, port: u16, change: impl FnOnce(&mut Destination)) {
        if let Ok(mut destinations) = self.destinations.lock() {
            let mut key = (host.to_owned(), port);
            if destinations.len() >= MAX_DESTINATIONS && !destinations.contains_key(&key) {
                key = (OTHERS.to_owned(), 0);
            }
            change(destinations.entry(key).or_default());
        }
    }

    pub fn refused(&self, host: &str, port: u16, why: &str) {
        self.with(host, port, |destination| {
            destination.refused += 1;
            destination.why = Some(why.to_owned());
        });
    }

    pub fn failed(&self, host: &str, port: u16) {
        self.with(host, port, |destination| destination.failed += 1);
    }

    /// A connection made, with `sent` bytes already on their way; its
    /// bytes are counted when it closes.
    pub fn opened<'a>(&'a self, host: &str, port: u16, sent: u64) -> Opened<'a> {
        self.with(host, port, |destination| {
            destination.connections += 1;
            destination.bytes_out += sent;
        });
        Opened {
            record: self,
            host: host.to_owned(),
            port,
        }
    }

    /// The record since the last call, by host and port; then it starts
    /// again. Connections still open count their bytes in the next one.
    pub fn take(&self) -> Vec<((String, u16), Destination)> {
        match self.destinations.lock() {
            Ok(mut destinations) => std::mem::take(&mut *destinations).into_iter().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// [`Self::take`] as log lines.
    #[cfg(test)]
    fn take_lines(&self) -> Vec<String> {
        lines(&self.take())
    }
}

/// A record as log lines: one per destination, refusals first.
pub fn lines(destinations: &[((String, u16), Destination)]) -> Vec<String> {
    let refused = destinations
        .iter()
        .filter(|(_, d)| d.refused > 0)
        .map(|((host, port), d)| {
            format!(
                "egress refused: {} — it {} ({} attempt{})",
                authority(host, *port),
                d.why.as_deref().unwrap_or("is not allowed"),
                d.refused,
                plural(d.refused)
            )
        });
    let reached = destinations
        .iter()
        .filter(|(_, d)| d.connections > 0 || d.failed > 0)
        .map(|((host, port), d)| {
            let mut line = format!(
                "egress: {} — {} connection{}, {} in, {} out",
                authority(host, *port),
                d.connections,
                plural(d.connections),
                bytes(d.bytes_in),
                bytes(d.bytes_out)
            );
            if d.failed > 0 {
                line.push_str(&format!(", {} not accepted", d.failed));
            }
            line
        });
    refused.chain(reached).collect()
}

/// An open connection of the record's.
pub struct Opened<'a> {
    record: &'a Record,
    host: String,
    port: u16,
}

impl Opened<'_> {
    pub fn closed(self, out: u64, back: u64) {
        self.record.with(&self.host, self.port, |destination| {
            destination.bytes_out += out;
            destination.bytes_in += back;
        });
    }
}

fn authority(host: &str, port: u16) -> String {
    if host == OTHERS {
        host.to_owned()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn bytes(count: u64) -> String {
    match count {
        0..1_000 => format!("{count} B"),
        1_000..1_000_000 => format!("{:.1} kB", count as f64 / 1e3),
        _ => format!("{:.1} MB", count as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_says_what_went_out_and_what_was_refused() {
        let record = Record::default();
        record.refused("127.0.0.1", 5432, "points at a loopback address (127.0.0.1)");
        record.refused("127.0.0.1", 5432, "points at a loopback address (127.0.0.1)");
        record.opened("registry.npmjs.org", 443, 517).closed(1_000, 2_345_678);
        record.opened("registry.npmjs.org", 443, 0).closed(10, 20);
        record.failed("::1", 8080);
        assert_eq!(
            record.take_lines(),
            [
                "egress refused: 127.0.0.1:5432 — it points at a loopback address (127.0.0.1) (2 attempts)",
                "egress: [::1]:8080 — 0 connections, 0 B in, 0 B out, 1 not accepted",
                "egress: registry.npmjs.org:443 — 2 connections, 2.3 MB in, 1.5 kB out",
            ]
        );
        assert!(record.take_lines().is_empty(), "each report says what is new");
        // Endless names cost one line more, not one each.
        for n in 0..10_000 {
            record.refused(
                &format!("host-{n}.example"),
                443,
                "names a host that cannot be resolved",
            );
        }
        let lines = record.take_lines();
        assert_eq!(lines.len(), MAX_DESTINATIONS + 1, "{:?}", lines.last());
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("egress refused: (other destinations)"))
        );
    }
}
