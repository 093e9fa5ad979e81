//! The audit log: one JSON line per security-relevant event (auth failures, tool calls, backend
//! failures with their full text, bearer rotations, plugin reloads, drain start and end), keyed
//! by `req_id`. Never a token: only its SHA-256 (`bearer_hash`).

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

/// Where audit lines go.
#[derive(Clone)]
enum Sink {
    /// A writer thread (stderr or a file): requests never wait on a write or on each other.
    Writer(std::sync::mpsc::SyncSender<Msg>),
    Memory(Arc<Mutex<Vec<Value>>>),
}

enum Msg {
    /// An event and when it happened: the writer thread serialises it, off the request path.
    Event(std::time::SystemTime, Box<AuditEvent>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// How long the writer lets lines gather between writes. Lines reach the destination at most
/// this much later; `flush` waits for them.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

/// Lines queued for the writer before a request has to wait (back-pressure, never loss).
const QUEUE: usize = 65_536;

/// Lines the writer found queued at its last wake-up (it writes them all, then sleeps for
/// [`BATCH_WINDOW`]). Only the writer writes it, so requests touch no shared counter.
static BACKLOG: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Lines that could not be written.
static WRITE_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The audit writer's backlog at its last wake-up, and the lines it failed to write so far (for
/// `sluice_audit_backlog_lines` and `sluice_audit_write_errors_total`). Near [`QUEUE`], requests
/// start waiting for the writer.
pub fn writer_stats() -> (usize, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (BACKLOG.load(Relaxed), WRITE_ERRORS.load(Relaxed))
}

fn writer_thread(mut out: Box<dyn std::io::Write + Send>) -> std::sync::mpsc::SyncSender<Msg> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(QUEUE);
    std::thread::Builder::new()
        .name("sluice-audit".into())
        .spawn(move || {
            let mut out = std::io::BufWriter::new(&mut out);
            let mut failed = false;
            // Ends when every sender is gone.
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                let mut batch = 0usize;
                // Write everything queued, then flush once.
                while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                    batch += 1;
                    match msg {
                        Msg::Event(at, ev) => {
                            let written = serde_json::to_writer(&mut out, &Line::of(at, &ev))
                                .map_err(std::io::Error::from)
                                .and_then(|()| out.write_all(b"\n"));
                            if let Err(e) = written {
                                WRITE_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if !failed {
                                    failed = true;
                                    tracing::error!(error = %e, "Cannot write the audit log.");
                                }
                            }
                        }
                        Msg::Flush(ack) => {
                            let _ = out.flush();
                            let _ = ack.send(());
                        }
                    }
                }
                let _ = out.flush();
                BACKLOG.store(batch, std::sync::atomic::Ordering::Relaxed);
                // Let lines gather instead of being woken for each one: a wake-up per request
                // costs the request path two context switches on a busy machine.
                std::thread::sleep(BATCH_WINDOW);
            }
            let _ = out.flush();
        })
        .expect("spawning the audit writer thread");
    tx
}

/// The audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    sink: Sink,
}

/// The fields of one audit line; `event` is required, the rest are set when known.
#[derive(Debug, Default, Clone)]
pub struct AuditEvent {
    pub event: &'static str,
    pub req_id: Option<String>,
    pub bearer_hash: Option<String>,
    pub bearer_key_name: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub tool: Option<String>,
    pub cluster_id: Option<String>,
    /// Event-specific fields (`reason`, `error`, `live_hash`, `status`, ...).
    pub extra: Map<String, Value>,
}

impl AuditEvent {
    /// An event with only its name.
    pub fn new(event: &'static str) -> Self {
        Self { event, ..Default::default() }
    }

    /// Adds an event-specific field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

impl AuditLog {
    /// Audit lines on stderr (the default).
    pub fn stderr() -> Self {
        Self { sink: Sink::Writer(writer_thread(Box::new(std::io::stderr()))) }
    }

    /// Audit lines appended to a file.
    pub fn file(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        Ok(Self { sink: Sink::Writer(writer_thread(Box::new(f))) })
    }

    /// Audit lines kept in memory (tests); returns the log and its lines.
    pub fn memory() -> (Self, Arc<Mutex<Vec<Value>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        (Self { sink: Sink::Memory(lines.clone()) }, lines)
    }

    /// Records one line: queued for the writer thread, which serialises and writes it. Failing
    /// to write is logged, never fatal to the request.
    pub fn record(&self, ev: AuditEvent) {
        let at = std::time::SystemTime::now();
        match &self.sink {
            Sink::Writer(tx) => {
                let _ = tx.send(Msg::Event(at, Box::new(ev)));
            }
            Sink::Memory(lines) => {
                let value = serde_json::to_value(Line::of(at, &ev)).expect("an audit line serialises");
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(value);
            }
        }
    }

    /// Waits until every line recorded so far is written (call before exiting).
    pub fn flush(&self) {
        if let Sink::Writer(tx) = &self.sink {
            let (ack, done) = std::sync::mpsc::channel();
            if tx.send(Msg::Flush(ack)).is_ok() {
                let _ = done.recv_timeout(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// One audit line as written.
#[derive(serde::Serialize)]
struct Line<'a> {
    ts: String,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    req_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bearer_hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bearer_key_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<&'a str>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

impl<'a> Line<'a> {
    fn of(at: std::time::SystemTime, ev: &'a AuditEvent) -> Self {
        Line {
            ts: humantime::format_rfc3339_micros(at).to_string(),
            event: ev.event,
            req_id: ev.req_id.as_deref(),
            bearer_hash: ev.bearer_hash.as_deref(),
            bearer_key_name: ev.bearer_key_name.as_deref(),
            source_ip: ev.source_ip,
            tool: ev.tool.as_deref(),
            cluster_id: ev.cluster_id.as_deref(),
            extra: &ev.extra,
        }
    }
}
