//! The sink guest kit: what every sink component needs, so a sink is its own logic only.
//!
//! - The `sink` world's bindings, generated once here: the types (`SinkConfig`, `SinkError`,
//!   `ExportRequest`, ...), the [`Guest`] trait a sink implements, and [`export_sink!`] to
//!   export it.
//! - Settings and secrets by key, and classified errors ([`terminal`], [`transient`],
//!   [`forbidden`]).
//! - One HTTP request over `wasi:http` ([`send`], [`exchange`]) and host name resolution
//!   ([`resolve`]); with the `async` feature, [`block_on`] for sinks written with tokio.
//!
//! ```text
//! use sluice_sink_common::*;
//!
//! struct Hook;
//!
//! impl Guest for Hook {
//!     fn describe() -> SinkInfo { /* type, family, version, capabilities */ }
//!     fn probe(config: SinkConfig) -> Result<String, SinkError> { /* reachable? */ }
//!     fn export(config: SinkConfig, request: ExportRequest) -> Result<Receipt, SinkError> {
//!         let url = required(&config, "url")?;
//!         /* deliver request.payload */
//!     }
//! }
//!
//! export_sink!(Hook);
//! ```

/// The `sink` world's bindings (their items are re-exported at the crate root).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "sink",
        pub_export_macro: true,
        export_macro_name: "export_sink",
        default_bindings_module: "sluice_sink_common::bindings",
    });
}

mod http;

pub use bindings::*;
pub use http::{HttpMethod, SendError, exchange, resolve, send, split_url};
pub use bindings::sluice::plugin::log::{Level as LogLevel, log};
pub use bindings::sluice::plugin::sink_types::{Capabilities, ErrorClass, Family};

/// A setting's value.
pub fn setting<'a>(config: &'a SinkConfig, key: &str) -> Option<&'a str> {
    config.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A setting that must be there (and not empty): a terminal error naming it otherwise.
pub fn required<'a>(config: &'a SinkConfig, key: &str) -> Result<&'a str, SinkError> {
    setting(config, key).filter(|v| !v.is_empty()).ok_or_else(|| terminal(format!("the `{key}` setting is missing")))
}

/// A secret's value (resolved by the host for this call).
pub fn secret<'a>(config: &'a SinkConfig, key: &str) -> Option<&'a str> {
    config.secrets.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// An error of this class.
pub fn error(class: ErrorClass, message: impl Into<String>) -> SinkError {
    SinkError { class, message: message.into() }
}

/// An error no retry mends (a bad setting, a refused credential): an operator must act.
pub fn terminal(message: impl Into<String>) -> SinkError {
    error(ErrorClass::Terminal, message)
}

/// An error worth retrying (no answer, a busy server).
pub fn transient(message: impl Into<String>) -> SinkError {
    error(ErrorClass::Transient, message)
}

/// The backend refused the credentials' access: an operator must grant it.
pub fn forbidden(message: impl Into<String>) -> SinkError {
    error(ErrorClass::Forbidden, message)
}

/// How an HTTP answer's status is classified: 2xx delivered; 408, 429 and 5xx transient; 403
/// forbidden; any other status terminal.
pub fn http_status_class(status: u16) -> Option<ErrorClass> {
    match status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(ErrorClass::Transient),
        403 => Some(ErrorClass::Forbidden),
        _ => Some(ErrorClass::Terminal),
    }
}

/// A request that got no answer, as a sink error: a request the host refused (its destination
/// is not in the sink's settings) or could not make is terminal, no answer is transient.
pub fn unanswered(e: SendError, what: &str) -> SinkError {
    match e {
        SendError::Invalid(m) => terminal(format!("{what}: {m}")),
        SendError::Denied => terminal(format!("{what}: the host refused the request: its host is not allowed for this sink")),
        SendError::Unanswered(m) => transient(format!("{what}: no answer: {m}")),
    }
}

/// Runs a future to completion on a single-threaded tokio runtime (TCP over `wasi:sockets`).
#[cfg(feature = "async")]
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, SinkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| transient(format!("starting the runtime: {e}")))?;
    Ok(rt.block_on(f))
}
