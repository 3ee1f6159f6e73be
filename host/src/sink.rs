//! The host's own stdout and stderr: what guests print and what the host
//! logs goes into a bounded queue per stream, drained by a writer thread
//! of its own, so no reactor thread ever waits on a slow or stalled
//! terminal, pipe or log shipper.
//!
//! `twill run | less`, a paused terminal or a stuck log shipper stops
//! reading; a blocking `write` on a reactor thread would then freeze every
//! connection, and a signal could not stop the process. Here a record that
//! does not fit in [`QUEUE_BYTES`] is dropped and counted instead. Drops on
//! stdout are reported on stderr (at most once per [`WARN_EVERY`]); drops on
//! stderr are reported on stderr itself, as the first line written once it
//! drains again. At exit, [`flush_at_exit`] gives the writers a short,
//! bounded time ([`EXIT_FLUSH`]) and never waits longer.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The most bytes one stream's queue holds; a record past it is dropped.
pub const QUEUE_BYTES: usize = 1 << 20;

/// Drops are reported at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long [`flush_at_exit`] waits for the queues to drain, at most.
pub const EXIT_FLUSH: Duration = Duration::from_millis(200);

/// Which of the host's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// One stream's queue and its writer thread.
#[derive(Debug)]
pub struct Pipe {
    stream: Stream,
    queue: Mutex<Queue>,
    /// Signalled when a record is queued.
    more: Condvar,
    /// Signalled when the queue is empty and nothing is being written.
    idle: Condvar,
    /// Records dropped since start.
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    records: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer thread holds records it took and has not written yet.
    writing: bool,
    /// Drops not yet reported (stderr reports its own, once it drains).
    unreported: u64,
    last_report: Option<Instant>,
}

static STDOUT: OnceLock<Pipe> = OnceLock::new();
static STDERR: OnceLock<Pipe> = OnceLock::new();

/// The pipe for `stream`, its writer thread started on first use.
pub fn pipe(stream: Stream) -> &'static Pipe {
    let cell = match stream {
        Stream::Stdout => &STDOUT,
        Stream::Stderr => &STDERR,
    };
    let mut started = false;
    let p = cell.get_or_init(|| {
        started = true;
        Pipe {
            stream,
            queue: Mutex::default(),
            more: Condvar::new(),
            idle: Condvar::new(),
            dropped: AtomicU64::new(0),
        }
    });
    if started {
        let name = match stream {
            Stream::Stdout => "twill-stdout",
            Stream::Stderr => "twill-stderr",
        };
        // Without a writer, every record is dropped once the queue is full,
        // and counted.
        let _ = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || p.write_loop());
    }
    p
}

impl Pipe {
    /// Queues one record (a whole line or log event) without blocking.
    /// Returns false if it was dropped because the queue is full.
    pub fn push(&self, record: Vec<u8>) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.bytes + record.len() > QUEUE_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            q.unreported += 1;
            let due = q.last_report.is_none_or(|t| t.elapsed() >= WARN_EVERY);
            if due && self.stream == Stream::Stdout {
                q.last_report = Some(Instant::now());
                let n = std::mem::take(&mut q.unreported);
                drop(q);
                tracing::warn!(
                    dropped = n,
                    total_dropped = self.dropped(),
                    "guest output dropped: the host's stdout is not being read fast enough"
                );
            }
            return false;
        }
        if q.unreported > 0
            && self.stream == Stream::Stderr
            && q.last_report.is_none_or(|t| t.elapsed() >= WARN_EVERY)
        {
            q.last_report = Some(Instant::now());
            let n = std::mem::take(&mut q.unreported);
            let note = format!(
                "twill: {n} lines of logs and guest stderr were dropped: stderr was not being read fast enough ({} in all)\n",
                self.dropped()
            );
            q.bytes += note.len();
            q.records.push_back(note.into_bytes());
        }
        q.bytes += record.len();
        q.records.push_back(record);
        drop(q);
        self.more.notify_one();
        true
    }

    /// Records dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `limit` for everything queued to be written. Returns
    /// whether it was.
    pub fn flush(&self, limit: Duration) -> bool {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (q, _) = self
            .idle
            .wait_timeout_while(q, limit, |q| !q.records.is_empty() || q.writing)
            .unwrap_or_else(|e| e.into_inner());
        q.records.is_empty() && !q.writing
    }

    fn write_loop(&self) {
        let mut batch = Vec::new();
        loop {
            {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.writing = false;
                if q.records.is_empty() {
                    self.idle.notify_all();
                }
                while q.records.is_empty() {
                    q = self.more.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                batch.clear();
                for r in q.records.drain(..) {
                    batch.extend_from_slice(&r);
                }
                q.bytes = 0;
                q.writing = true;
            }
            // A closed stream (EPIPE) must not take the host down: the
            // output is discarded, as a terminal that went away would.
            let _ = match self.stream {
                Stream::Stdout => std::io::stdout().lock().write_all(&batch),
                Stream::Stderr => std::io::stderr().lock().write_all(&batch),
            };
            if batch.capacity() > 4 * QUEUE_BYTES {
                batch = Vec::new();
            }
        }
    }
}

/// Gives both writers up to [`EXIT_FLUSH`] in all to write what is queued;
/// never waits longer (a stalled stream must not hold up the exit).
pub fn flush_at_exit() {
    let deadline = Instant::now() + EXIT_FLUSH;
    for cell in [&STDOUT, &STDERR] {
        if let Some(p) = cell.get() {
            p.flush(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

/// A `tracing` writer into the stderr pipe: each log event is one record.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrLog;

/// One log event being formatted; queued whole when dropped.
#[derive(Debug)]
pub struct LogRecord(Vec<u8>);

impl Write for LogRecord {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogRecord {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            pipe(Stream::Stderr).push(std::mem::take(&mut self.0));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrLog {
    type Writer = LogRecord;

    fn make_writer(&'a self) -> LogRecord {
        LogRecord(Vec::with_capacity(256))
    }
}

/// Whether guest output goes out as log records (`--log-format json`)
/// rather than as `[plugin] line` on the host's stdout and stderr.
static GUEST_OUTPUT_AS_LOGS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Sends guest output through the log (for `--log-format json`: each line
/// one JSON record with its plugin and stream).
pub fn set_guest_output_as_logs(on: bool) {
    GUEST_OUTPUT_AS_LOGS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_guest_output_as_logs`].
pub fn guest_output_as_logs() -> bool {
    GUEST_OUTPUT_AS_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Escapes what a terminal or a log reader would act on, so that bytes a
/// guest prints cannot forge or hide host log lines: C0 controls but tab
/// (`\r`, escape sequences, NUL), DEL, C1 controls, the Unicode bidi and
/// line/paragraph separators, and invalid UTF-8. Printable text is kept.
pub fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    // Writing to a Vec cannot fail.
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let _ = match c {
                '\t' => write!(out, "\t"),
                '\n' => write!(out, "\\n"),
                '\r' => write!(out, "\\r"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\x{:02x}", c as u32),
                c if is_hidden(c) => write!(out, "\\u{{{:x}}}", c as u32),
                c => write!(out, "{c}"),
            };
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// C1 controls and the characters that reorder, hide or break lines.
fn is_hidden(c: char) -> bool {
    matches!(c as u32,
        0x80..=0x9f
        | 0x061c
        | 0x200b..=0x200f
        | 0x2028..=0x202e
        | 0x2060..=0x2069
        | 0xfeff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(b: &[u8]) -> String {
        let mut v = Vec::new();
        escape_into(&mut v, b);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn controls_are_escaped_and_text_is_kept() {
        assert_eq!(esc(b"plain text\twith tab"), "plain text\twith tab");
        assert_eq!(esc(b"\r\x1b[2KINFO fake"), "\\r\\x1b[2KINFO fake");
        assert_eq!(esc(b"nul\0del\x7f"), "nul\\x00del\\x7f");
        assert_eq!(esc(b"a\nb"), "a\\nb");
        assert_eq!(
            esc("caf\u{e9} \u{202e}evil".as_bytes()),
            "caf\u{e9} \\u{202e}evil"
        );
        assert_eq!(esc("\u{9b}31m".as_bytes()), "\\u{9b}31m");
        assert_eq!(esc(b"bad \xff\xfe utf8"), "bad \\xff\\xfe utf8");
        assert_eq!(esc("日本語".as_bytes()), "日本語");
    }
}
