//! What `GET /api/v2/exports` shows: each export's condition and, per sink, whether the last
//! run reached it, as the inventory exporter's operators read them. The values are enums that
//! serialise to the strings of the wire (`Exported`, `Degraded`, `transient`, ...).

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::policy::BreakerState;
use crate::runtime::sinks::ErrorClass;

/// Whether the last run reached a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Synced {
    /// Delivered (every part).
    Exported,
    /// Skipped: the same data was delivered within the binding's `min_interval`.
    Debounced,
    /// Not delivered; the delivery is pending.
    ExportFailed,
    /// Not run yet.
    Pending,
}

/// An export's condition after its last run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Condition {
    /// Every sink has the data.
    Synced,
    /// Some sink does not, for a reason a retry may mend (or was debounced).
    PartiallySynced,
    /// Some sink failed with a terminal or forbidden error: an operator must act.
    Degraded,
    /// Not run since start.
    NeverRun,
}

impl Condition {
    /// The condition of a run whose sink lines are these.
    pub fn of(lines: &[SinkExportStatus]) -> Self {
        let needs_operator = |l: &SinkExportStatus| {
            l.synced == Synced::ExportFailed && l.last_error.as_ref().is_some_and(|e| e.class != FailureClass::Transient)
        };
        if lines.iter().any(needs_operator) {
            Self::Degraded
        } else if lines.iter().all(|l| l.synced == Synced::Exported) {
            Self::Synced
        } else {
            Self::PartiallySynced
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "Synced",
            Self::PartiallySynced => "PartiallySynced",
            Self::Degraded => "Degraded",
            Self::NeverRun => "NeverRun",
        }
    }
}

/// A failure's class: `transient` (retried), `terminal` or `forbidden` (an operator must act).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureClass {
    Transient,
    Terminal,
    Forbidden,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Terminal => "terminal",
            Self::Forbidden => "forbidden",
        }
    }

    /// The class of a persisted name; anything unknown counts as transient (retried).
    pub fn parse(name: &str) -> Self {
        match name {
            "terminal" => Self::Terminal,
            "forbidden" => Self::Forbidden,
            _ => Self::Transient,
        }
    }
}

impl From<ErrorClass> for FailureClass {
    fn from(c: ErrorClass) -> Self {
        match c {
            ErrorClass::Transient => Self::Transient,
            ErrorClass::Terminal => Self::Terminal,
            ErrorClass::Forbidden => Self::Forbidden,
        }
    }
}

/// One sink's line in an export's status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkExportStatus {
    pub sink: String,
    pub synced: Synced,
    pub message: String,
    pub last_export_time: Option<String>,
    pub last_checksum: Option<String>,
    pub last_error: Option<ErrorStatus>,
    pub breaker: BreakerState,
    /// The component the last delivery ran on: `type@version sha256:<first 16 hex digits>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

impl SinkExportStatus {
    /// A line with nothing known but the sink and how it stands.
    pub fn new(sink: &str, synced: Synced, message: String) -> Self {
        Self {
            sink: sink.to_owned(),
            synced,
            message,
            last_export_time: None,
            last_checksum: None,
            last_error: None,
            breaker: BreakerState::Closed,
            component: None,
        }
    }

    /// A line from the state persisted before a restart (`Pending` when there is none).
    pub fn restored(sink: &str, state: Option<&super::state::SinkState>) -> Self {
        let synced = if state.is_some_and(|s| s.pending) { Synced::ExportFailed } else { Synced::Pending };
        let message = if state.is_some() { "state restored at start" } else { "not run yet" };
        Self {
            last_export_time: state.and_then(|s| s.last_success_micros).map(micros_rfc3339),
            last_checksum: state.and_then(|s| s.checksum.clone()),
            last_error: state
                .and_then(|s| s.last_error.clone())
                .map(|(c, message)| ErrorStatus { class: FailureClass::parse(&c), message }),
            ..Self::new(sink, synced, message.into())
        }
    }

    /// A failed delivery.
    pub fn failed(sink: &str, class: FailureClass, message: String) -> Self {
        Self {
            last_error: Some(ErrorStatus { class, message: message.clone() }),
            ..Self::new(sink, Synced::ExportFailed, message)
        }
    }
}

/// A classified error, as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorStatus {
    pub class: FailureClass,
    pub message: String,
}

/// An export's status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    pub name: String,
    pub condition: Condition,
    pub generation: u64,
    pub checksum: Option<String>,
    pub item_count: Option<usize>,
    pub last_run: Option<String>,
    /// Warnings of the last run that are not failures: `ExportShardWarning` (many items: shard
    /// the export, e.g. by cluster) and `ExportSizeWarning` (a payload near the cap).
    pub warnings: Vec<String>,
    pub sink_exports: Vec<SinkExportStatus>,
}

/// The warnings of a run that are not failures: `ExportShardWarning` (many items: shard the
/// export, e.g. by cluster) and `ExportSizeWarning` (a payload near the cap `max_bytes`).
pub fn warnings(snapshot: &super::envelope::Snapshot, max_bytes: usize) -> Vec<String> {
    use super::envelope::{SHARD_WARN_ITEMS, SPILL_WARN_BYTES};
    let mut out = Vec::new();
    let items = snapshot.items.len();
    if items >= SHARD_WARN_ITEMS {
        out.push(format!(
            "ExportShardWarning: {items} items (warning from {SHARD_WARN_ITEMS}); consider splitting the export, e.g. by cluster"
        ));
    }
    let bytes = snapshot.items.iter().map(|i| i.len() + 1).sum::<usize>();
    if bytes >= SPILL_WARN_BYTES {
        out.push(format!(
            "ExportSizeWarning: about {bytes} bytes of items (warning from {SPILL_WARN_BYTES}); the cap is {max_bytes}"
        ));
    }
    out
}

/// A time as RFC 3339 with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Microseconds since the epoch as RFC 3339.
pub fn micros_rfc3339(us: i64) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + Duration::from_micros(us.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_serialise_to_the_strings_of_the_wire() {
        let mut line = SinkExportStatus::failed("hook", FailureClass::Forbidden, "no".into());
        line.breaker = BreakerState::HalfOpen;
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["synced"], "ExportFailed");
        assert_eq!(v["lastError"]["class"], "forbidden");
        assert_eq!(v["breaker"], "half_open");
        for (c, s) in [
            (Condition::Synced, "Synced"),
            (Condition::PartiallySynced, "PartiallySynced"),
            (Condition::Degraded, "Degraded"),
            (Condition::NeverRun, "NeverRun"),
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), s);
            assert_eq!(c.as_str(), s);
        }
        for s in [Synced::Exported, Synced::Debounced, Synced::Pending] {
            assert_eq!(serde_json::to_value(s).unwrap(), format!("{s:?}"));
        }
        for c in [FailureClass::Transient, FailureClass::Terminal, FailureClass::Forbidden] {
            assert_eq!(FailureClass::parse(c.as_str()), c);
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }

    #[test]
    fn the_condition_follows_the_sink_lines() {
        let ok = SinkExportStatus::new("a", Synced::Exported, String::new());
        let debounced = SinkExportStatus::new("b", Synced::Debounced, String::new());
        let transient = SinkExportStatus::failed("c", FailureClass::Transient, "down".into());
        let terminal = SinkExportStatus::failed("d", FailureClass::Terminal, "bad password".into());
        assert_eq!(Condition::of(std::slice::from_ref(&ok)), Condition::Synced);
        assert_eq!(Condition::of(&[ok.clone(), debounced]), Condition::PartiallySynced);
        assert_eq!(Condition::of(&[ok.clone(), transient.clone()]), Condition::PartiallySynced);
        assert_eq!(Condition::of(&[ok, transient, terminal]), Condition::Degraded);
    }
}
