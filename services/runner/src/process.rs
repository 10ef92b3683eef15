//! Running a sandboxed command: its output into the logs, bounded, and
//! its end — exit, a limit, or a stop that kills the sandbox and
//! everything in it.
//!
//! Output is read in chunks, never a line at a time: a line is cut at
//! [`MAX_LINE_BYTES`] as it arrives (the rest is counted, not kept), bytes
//! count against the output limit as they arrive (a line without a newline
//! included), invalid UTF-8 is decoded lossily, and lines beyond the rate
//! limit are dropped and counted. The pipes are read until they close,
//! whatever is dropped, so a command never dies of a closed pipe.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use capsule::proto::deploy::v1::LogStream;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::Child,
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

/// A line longer than this is cut (before masking).
pub const MAX_LINE_BYTES: usize = 4096;
/// Output is read in chunks of this size.
const CHUNK_BYTES: usize = 64 * 1024;
/// Lines are sent in batches of at most this many.
const BATCH_LINES: usize = 200;
/// What replaces a secret value in the logs.
const MASK: &str = "********";

/// Where lines go (the runner API's AppendLogs).
#[tonic::async_trait]
pub trait LineSink: Send + Sync {
    async fn lines(&self, lines: Vec<(LogStream, String)>);
}

/// How long an app or a worker has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How a command ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Killed(&'static str),
    Canceled,
}

/// Bounds on one command.
pub struct Limits {
    pub time: Option<Duration>,
    /// Output bytes (both streams) before the command is killed.
    pub output_bytes: u64,
    /// Lines per second kept; bursts of five times that.
    pub lines_per_sec: u32,
}

/// Hides secret values — as they are, and base64-, hex- and URL-encoded —
/// including the start of one that a cut line ends with.
#[derive(Debug, Default)]
pub struct Masker {
    /// Longest first, so an encoding that contains another is hidden whole.
    patterns: Vec<String>,
}

/// Values shorter than this are not masked (they would hide ordinary text).
const MIN_SECRET_BYTES: usize = 4;

impl Masker {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let mut patterns = Vec::new();
        for value in secrets.into_iter().filter(|value| value.len() >= MIN_SECRET_BYTES) {
            let bytes = value.as_bytes();
            patterns.push(value.to_owned());
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                patterns.push(engine.encode(bytes));
            }
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            patterns.push(hex.to_ascii_uppercase());
            patterns.push(hex);
            patterns.push(percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string());
        }
        patterns.sort_by_key(|pattern| std::cmp::Reverse(pattern.len()));
        patterns.dedup();
        Self { patterns }
    }

    /// `text` with every secret hidden; when `cut`, also a trailing start
    /// of one (the rest of it fell past the cut).
    pub fn mask(&self, text: &str, cut: bool) -> String {
        let mut masked = self
            .patterns
            .iter()
            .fold(text.to_owned(), |text, pattern| text.replace(pattern.as_str(), MASK));
        if cut {
            for pattern in &self.patterns {
                let longest = (pattern.len() - 1).min(masked.len());
                let tail = (MIN_SECRET_BYTES..=longest)
                    .rev()
                    .find(|&len| pattern.is_char_boundary(len) && masked.ends_with(&pattern[..len]));
                if let Some(len) = tail {
                    masked.truncate(masked.len() - len);
                    masked.push_str(MASK);
                }
            }
        }
        masked
    }
}

/// One line as read: its text (lossy, at most [`MAX_LINE_BYTES`]) and how
/// many bytes of it were cut.
struct Line {
    stream: LogStream,
    text: String,
    cut: u64,
}

impl Line {
    /// The line as it is logged: secrets masked, a cut said.
    fn masked(&self, masker: &Masker) -> (LogStream, String) {
        let mut text = masker.mask(&self.text, self.cut > 0);
        if self.cut > 0 {
            text.push_str(&format!(" […{} bytes cut]", self.cut));
        }
        (self.stream, text)
    }
}

/// Reads a pipe to its end in chunks, cutting lines as they come.
async fn read_lines(
    mut pipe: impl AsyncRead + Unpin,
    stream: LogStream,
    tx: mpsc::Sender<Line>,
    bytes: Arc<AtomicU64>,
) {
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = 0u64;
    let send = |line: &mut Vec<u8>, cut: &mut u64| {
        // PostgreSQL refuses NUL in text.
        let text = String::from_utf8_lossy(line).replace('\0', "\u{fffd}");
        let sent = Line {
            stream,
            text,
            cut: *cut,
        };
        line.clear();
        *cut = 0;
        sent
    };
    let keep = |line: &mut Vec<u8>, cut: &mut u64, part: &[u8]| {
        let room = MAX_LINE_BYTES.saturating_sub(line.len()).min(part.len());
        line.extend_from_slice(&part[..room]);
        *cut += (part.len() - room) as u64;
    };
    loop {
        let read = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        bytes.fetch_add(read as u64, Ordering::Relaxed);
        let mut rest = &chunk[..read];
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            keep(&mut line, &mut cut, &rest[..end]);
            if tx.send(send(&mut line, &mut cut)).await.is_err() {
                return;
            }
            rest = &rest[end + 1..];
        }
        keep(&mut line, &mut cut, rest);
    }
    if !line.is_empty() || cut > 0 {
        let _ = tx.send(send(&mut line, &mut cut)).await;
    }
}

/// Kills a command's process group: for a sandbox, bwrap itself, whose
/// death ends its pid namespace and everything in it.
pub fn kill_group(pid: i32) {
    if pid > 0 {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// A token bucket: `rate` lines a second, bursts of `5 × rate`.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
    last_note: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate * 5.0,
            last: Instant::now(),
            dropped: 0,
            last_note: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate * 5.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// The note for lines dropped since the last one: at most one a
    /// second, and only when there is room for it.
    fn note(&mut self) -> Option<String> {
        if self.dropped == 0 || self.last_note.elapsed() < Duration::from_secs(1) || !self.allow() {
            return None;
        }
        self.last_note = Instant::now();
        self.note_now()
    }

    /// The note for lines dropped since the last one, if any.
    fn note_now(&mut self) -> Option<String> {
        if self.dropped == 0 {
            return None;
        }
        let note = format!(
            "{} lines dropped: more than {} lines per second",
            self.dropped, self.rate
        );
        self.dropped = 0;
        Some(note)
    }
}

/// Streams a command's output into `sink` until it exits, `stop` is
/// cancelled, or it passes a limit; kills its process group in the last
/// two cases.
pub async fn pump(
    sink: &dyn LineSink,
    mut child: Child,
    stop: CancellationToken,
    limits: Limits,
    masker: &Masker,
) -> Ended {
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).unwrap_or(0);
    let bytes = Arc::new(AtomicU64::new(0));
    let (lines_tx, mut lines) = mpsc::channel::<Line>(1024);
    let pipes: [(LogStream, Option<Box<dyn AsyncRead + Unpin + Send>>); 2] = [
        (LogStream::Stdout, child.stdout.take().map(|pipe| Box::new(pipe) as _)),
        (LogStream::Stderr, child.stderr.take().map(|pipe| Box::new(pipe) as _)),
    ];
    for (stream, pipe) in pipes {
        if let Some(pipe) = pipe {
            tokio::spawn(read_lines(pipe, stream, lines_tx.clone(), bytes.clone()));
        }
    }
    drop(lines_tx);

    let deadline = tokio::time::sleep(limits.time.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut rate = RateLimit::new(limits.lines_per_sec);
    let mut pending = Vec::new();
    let mut open = true;
    let over_limit = |bytes: &AtomicU64| bytes.load(Ordering::Relaxed) > limits.output_bytes;
    let ended = loop {
        tokio::select! {
            line = lines.recv(), if open => match line {
                Some(line) => {
                    if rate.allow() {
                        pending.push(line.masked(masker));
                    }
                    if over_limit(&bytes) {
                        kill_group(pid);
                        break Ended::Killed("output limit reached");
                    }
                    if pending.len() >= BATCH_LINES {
                        sink.lines(std::mem::take(&mut pending)).await;
                    }
                }
                None => open = false,
            },
            _ = tick.tick() => {
                if over_limit(&bytes) {
                    kill_group(pid);
                    break Ended::Killed("output limit reached");
                }
                if let Some(note) = rate.note() {
                    pending.push((LogStream::System, note));
                }
                sink.lines(std::mem::take(&mut pending)).await;
            }
            status = child.wait(), if !open => break match status {
                Ok(status) => Ended::Exited(status.code().unwrap_or(128)),
                Err(_) => Ended::Exited(128),
            },
            () = stop.cancelled() => {
                kill_group(pid);
                break Ended::Canceled;
            }
            () = &mut deadline => {
                kill_group(pid);
                break Ended::Killed("time limit reached");
            }
        }
    };
    while let Ok(line) = lines.try_recv() {
        if rate.allow() {
            pending.push(line.masked(masker));
        }
    }
    if let Some(note) = rate.note_now() {
        pending.push((LogStream::System, note));
    }
    sink.lines(pending).await;
    let _ = child.wait().await;
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_as_they_are_and_encoded_and_when_cut() {
        let masker = Masker::new(["sk-live-0123456789", "ab"]);
        assert_eq!(masker.mask("key=sk-live-0123456789.", false), "key=********.");
        assert_eq!(masker.mask("b64 c2stbGl2ZS0wMTIzNDU2Nzg5", false), "b64 ********");
        assert_eq!(
            masker.mask("hex 736b2d6c6976652d30313233343536373839", false),
            "hex ********"
        );
        assert_eq!(masker.mask("url sk%2Dlive%2D0123456789", false), "url ********");
        assert_eq!(masker.mask("cut here: sk-live-01", true), "cut here: ********");
        assert_eq!(masker.mask("cut here: sk-live-01", false), "cut here: sk-live-01");
        // Too short to mask without hiding ordinary text.
        assert_eq!(masker.mask("ab", false), "ab");
    }
}
