//! The process's subscriber: logs on stderr and, with `[traces]`, the trace layer.

/// What is logged unless `SLUICE_LOG` says otherwise: Sluice at INFO, the libraries it uses at
/// WARN (the MCP library logs three INFO lines per stateless request: noise that drowns the
/// audit trail and costs CPU).
const DEFAULT_LOG_FILTER: &str = "info,rmcp=warn";

/// Logs to stderr in `format`, filtered by `SLUICE_LOG` (default `info`). Text has colours only
/// on a terminal, so a log written to a file or a pipe (systemd, Kubernetes) is plain text.
/// With `traces`, spans of `sluice::trace` also go to the trace exporter, whatever `SLUICE_LOG`
/// says (each layer has its own filter).
pub fn init_logging(format: crate::config::LogFormat, traces: Option<&super::TracesConfig>) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
    // Trace spans are not log context: log lines stay the same whether a request is traced.
    let filter = filter.add_directive(format!("{}=off", super::TARGET).parse()?);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        crate::config::LogFormat::Json => logs.json().boxed(),
        crate::config::LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            logs.with_ansi(std::io::stderr().is_terminal() && !no_color).boxed()
        }
    };
    let traces = traces.map(super::install).transpose().map_err(|e| e.context("starting the trace exporter ([traces])"))?;
    tracing_subscriber::registry().with(traces).with(logs.with_filter(filter)).init();
    Ok(())
}
