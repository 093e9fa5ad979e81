//! Guest-side helpers for writing Sluice tools in Rust.
//!
//! The WIT in `wit/` is the contract and is usable on its own; this crate only removes the
//! boilerplate every Rust tool repeats: the generated bindings, typed arguments from JSON, query
//! results as JSON objects and error mapping.
//!
//! ```text
//! struct MyTool;
//! impl sluice_pdk::Guest for MyTool { /* describe, call */ }
//! sluice_pdk::export_tool!(MyTool);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "tool",
        default_bindings_module: "sluice_pdk::bindings",
        pub_export_macro: true,
        export_macro_name: "export_tool",
    });
}

pub use bindings::{Guest, export_tool};
pub use bindings::sluice::plugin::log::{Level, log};
pub use bindings::sluice::plugin::query::{Column, ColumnType, QueryError, QueryResult, Value, query, query_at_most};
pub use bindings::sluice::plugin::tool_types::{CallContext, ToolError, ToolInfo};
pub use serde_json::{Value as Json, json};

/// Parses the call's `args` (already validated by the host against the input schema).
pub fn parse_args<T: serde::de::DeserializeOwned>(args: &str) -> Result<T, ToolError> {
    serde_json::from_str(args).map_err(|e| ToolError::InvalidArgs(e.to_string()))
}

/// The output schema of a tool answering `{"rows": [{column: value, ...}, ...]}`.
pub fn rows_output_schema() -> Json {
    json!({
        "type": "object",
        "required": ["rows"],
        "properties": {"rows": {"type": "array", "items": {"type": "object"}}}
    })
}

/// The `describe` answer of a tool that answers rows (see [`rows_result`]): tenant-scoped
/// bearers allowed, output schema from [`rows_output_schema`].
pub fn rows_tool(name: &str, version: &str, description: &str, input_schema: Json) -> ToolInfo {
    ToolInfo {
        name: name.into(),
        description: description.into(),
        version: version.into(),
        input_schema: input_schema.to_string(),
        output_schema: rows_output_schema().to_string(),
        allow_tenant_scoped: true,
    }
}

/// [`rows_tool`] with the schema of one row (`{"type": "object", "properties": ...}`) in the
/// output schema.
pub fn rows_tool_of(name: &str, version: &str, description: &str, input_schema: Json, row_schema: Json) -> ToolInfo {
    let output = json!({
        "type": "object",
        "required": ["rows"],
        "properties": {"rows": {"type": "array", "items": row_schema}}
    });
    ToolInfo { output_schema: output.to_string(), ..rows_tool(name, version, description, input_schema) }
}

/// `info` with a human-readable `title` in its input schema, which MCP clients show as the tool's
/// `title` (and its annotations' title). The schema must be a JSON object.
pub fn titled(mut info: ToolInfo, title: &str) -> ToolInfo {
    if let Ok(Json::Object(mut schema)) = serde_json::from_str::<Json>(&info.input_schema) {
        schema.insert("title".into(), Json::String(title.into()));
        info.input_schema = Json::Object(schema).to_string();
    }
    info
}

/// A query result as the tool's answer: `{"rows": [{column: value, ...}, ...]}`.
pub fn rows_result(result: &QueryResult) -> Result<String, ToolError> {
    to_result(&json!({ "rows": rows_as_objects(result) }))
}

/// Serialises a tool's result.
pub fn to_result<T: serde::Serialize>(value: &T) -> Result<String, ToolError> {
    serde_json::to_string(value).map_err(|e| ToolError::Internal(format!("serialising result: {e}")))
}

impl From<QueryError> for ToolError {
    fn from(e: QueryError) -> Self {
        ToolError::Query(e)
    }
}

/// One cell as JSON: timestamps as RFC 3339 strings (UTC, microseconds), dates as `YYYY-MM-DD`,
/// blobs as lowercase hex.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int64(i) => Json::from(*i),
        Value::Float64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Text(s) => Json::String(s.clone()),
        Value::Timestamp(us) => Json::String(format_timestamp_micros(*us)),
        Value::Date(days) => Json::String(format_date(i64::from(*days))),
        Value::Blob(b) => Json::String(b.iter().map(|x| format!("{x:02x}")).collect()),
    }
}

/// Rows as JSON objects keyed by column name (`{"rows":[{...}]}` is the usual tool output).
pub fn rows_as_objects(result: &QueryResult) -> Vec<Json> {
    result
        .rows
        .iter()
        .map(|row| {
            let mut obj = serde_json::Map::with_capacity(row.len());
            for (col, v) in result.columns.iter().zip(row) {
                obj.insert(col.name.clone(), value_to_json(v));
            }
            Json::Object(obj)
        })
        .collect()
}

/// Rows as positional JSON arrays (`{"columns":[...],"rows":[[...]]}`).
pub fn rows_as_arrays(result: &QueryResult) -> Vec<Json> {
    result.rows.iter().map(|row| Json::Array(row.iter().map(value_to_json).collect())).collect()
}

/// An optional text parameter: `NULL` when absent.
pub fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.to_owned()))
}

fn format_date(days_since_epoch: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn format_timestamp_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (h, m, s) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    format!("{}T{h:02}:{m:02}:{s:02}.{micros:06}Z", format_date(days))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_and_timestamps() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(19_723), "2024-01-01");
        assert_eq!(format_date(-1), "1969-12-31");
        assert_eq!(format_timestamp_micros(1_704_067_200_000_001), "2024-01-01T00:00:00.000001Z");
        assert_eq!(format_timestamp_micros(-1), "1969-12-31T23:59:59.999999Z");
    }
}
