//! Per-component metrics: each tool version's and sink component version's calls, durations,
//! instantiation times and peak memory, resolved once per loaded version.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, exponential_buckets};

/// The metric series of one tool version, resolved once (no label lookups per call).
pub struct PluginSeries {
    pub(super) outcomes: &'static [&'static str],
    pub(super) calls: Vec<IntCounter>,
    /// Calls and failures per minute, for the last [`RECENT_MINUTES`] minutes (the status page):
    /// each slot packs the minute (upper 32 bits), calls (16) and failures (16).
    pub(super) recent: [std::sync::atomic::AtomicU64; RECENT_MINUTES],
    pub(super) duration: Histogram,
    pub(super) instantiate: Histogram,
    pub(super) peak_memory: Histogram,
}

impl PluginSeries {
    /// One call and how it ended (one of its outcomes), its time, and what it cost
    /// in the sandbox: making its instance (when it got that far) and its largest linear memory
    /// (bytes; 0 when it never got one).
    pub fn call(&self, outcome: &'static str, elapsed: Duration, instantiate: Option<Duration>, peak_memory: usize) {
        let i = self.outcomes.iter().position(|o| *o == outcome);
        debug_assert!(i.is_some(), "unknown outcome {outcome}");
        self.calls[i.unwrap_or(0)].inc();
        self.count_recent(outcome != "ok");
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(d) = instantiate {
            self.instantiate.observe(d.as_secs_f64());
        }
        if peak_memory > 0 {
            self.peak_memory.observe(peak_memory as f64);
        }
    }
}

/// How many minutes of calls the status page shows.
pub const RECENT_MINUTES: usize = 5;

fn minute_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60)
}

impl PluginSeries {
    fn count_recent(&self, failed: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let minute = minute_now();
        let slot = &self.recent[minute as usize % RECENT_MINUTES];
        let _ = slot.fetch_update(Relaxed, Relaxed, |v| {
            let (calls, failures) = if v >> 32 == minute & 0xffff_ffff { ((v >> 16) & 0xffff, v & 0xffff) } else { (0, 0) };
            let (calls, failures) = ((calls + 1).min(0xffff), (failures + u64::from(failed)).min(0xffff));
            Some((minute & 0xffff_ffff) << 32 | calls << 16 | failures)
        });
    }

    /// Calls and failures in the last [`RECENT_MINUTES`] minutes (this one included; counts
    /// saturate at 65 535 per minute).
    pub fn recent(&self) -> (u64, u64) {
        let now = minute_now() & 0xffff_ffff;
        self.recent.iter().fold((0, 0), |(c, f), slot| {
            let v = slot.load(std::sync::atomic::Ordering::Relaxed);
            if now.wrapping_sub(v >> 32) < RECENT_MINUTES as u64 { (c + ((v >> 16) & 0xffff), f + (v & 0xffff)) } else { (c, f) }
        })
    }
}

/// What each call costs inside the sandbox, by tool and version; the same for sinks by type and
/// version.
#[derive(Clone)]
pub(super) struct SandboxMetrics {
    pub(super) instantiate: HistogramVec,
    pub(super) peak_memory: HistogramVec,
    pub(super) sink_calls: IntCounterVec,
    pub(super) sink_duration: HistogramVec,
    pub(super) sink_instantiate: HistogramVec,
    pub(super) sink_peak_memory: HistogramVec,
}

impl SandboxMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let sink = ["sink_type", "version"];
        let sink_calls = IntCounterVec::new(
            Opts::new("sluice_sink_calls_total", "Sink component calls (exports, connection tests) by type, version and outcome (ok, sink_error, timeout, trap, memory_limit)."),
            &["sink_type", "version", "outcome"],
        )
        .expect("valid metric");
        let sink_duration = HistogramVec::new(
            HistogramOpts::new("sluice_sink_call_duration_seconds", "Sink component call duration (instantiate + call).")
                .buckets(exponential_buckets(1e-4, 3.0, 12).expect("valid buckets")),
            &sink,
        )
        .expect("valid metric");
        let sink_instantiate = HistogramVec::new(
            HistogramOpts::new("sluice_sink_instantiate_seconds", "Time to make a sink component's fresh instance for a call.")
                .buckets(exponential_buckets(2e-6, 2.5, 12).expect("valid buckets")),
            &sink,
        )
        .expect("valid metric");
        let sink_peak_memory = HistogramVec::new(
            HistogramOpts::new("sluice_sink_peak_memory_bytes", "The largest linear memory a sink component's call had.")
                .buckets(exponential_buckets(65_536.0, 4.0, 10).expect("valid buckets")),
            &sink,
        )
        .expect("valid metric");
        registry.register(Box::new(sink_calls.clone())).expect("unique metric");
        for h in [&sink_duration, &sink_instantiate, &sink_peak_memory] {
            registry.register(Box::new(h.clone())).expect("unique metric");
        }
        let instantiate = HistogramVec::new(
            HistogramOpts::new("sluice_plugin_instantiate_seconds", "Time to make a tool's fresh instance for a call.")
                .buckets(exponential_buckets(2e-6, 2.5, 12).expect("valid buckets")),
            &["plugin", "version"],
        )
        .expect("valid metric");
        let peak_memory = HistogramVec::new(
            HistogramOpts::new("sluice_plugin_peak_memory_bytes", "The largest linear memory a tool's call had.")
                .buckets(exponential_buckets(65_536.0, 4.0, 10).expect("valid buckets")),
            &["plugin", "version"],
        )
        .expect("valid metric");
        registry.register(Box::new(instantiate.clone())).expect("unique metric");
        registry.register(Box::new(peak_memory.clone())).expect("unique metric");
        Self { instantiate, peak_memory, sink_calls, sink_duration, sink_instantiate, sink_peak_memory }
    }
}
