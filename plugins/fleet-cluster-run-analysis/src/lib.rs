//! `fleet.cluster.run_analysis`: an ad-hoc read-only SQL query over the whole store.
//!
//! Refused for tenant-scoped bearers (`allow_tenant_scoped: false`): the SQL is the caller's.

use sluice_pdk::{CallContext, Guest, QueryError, ToolError, ToolInfo, json, query_at_most, rows_as_arrays};

const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    sql: String,
    limit: Option<u32>,
}

struct RunAnalysis;

impl Guest for RunAnalysis {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "fleet.cluster.run_analysis".into(),
            description: "Runs one read-only SQL SELECT over the events store and returns \
                          positional rows (at most `limit`)."
                .into(),
            version: env!("CARGO_PKG_VERSION").into(),
            input_schema: json!({
                "type": "object",
                "title": "Read-only SQL analysis",
                "required": ["sql"],
                "properties": {
                    "sql": {"type": "string", "minLength": 1, "maxLength": 100000,
                            "description": "One SELECT statement."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                              "default": DEFAULT_LIMIT}
                },
                "additionalProperties": false
            })
            .to_string(),
            output_schema: json!({
                "type": "object",
                "required": ["columns", "rows", "truncated"],
                "properties": {
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "rows": {"type": "array", "items": {"type": "array"}},
                    "truncated": {"type": "boolean",
                                  "description": "More rows exist than `limit`."}
                }
            })
            .to_string(),
            allow_tenant_scoped: false,
        }
    }

    fn call(_ctx: CallContext, args: String) -> Result<String, ToolError> {
        let args: Args = sluice_pdk::parse_args(&args)?;
        let limit = args.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let result = match query_at_most(&args.sql, &[], limit) {
            Ok(r) => r,
            // The SQL is the caller's: a statement DuckDB cannot parse or bind is a bad argument.
            Err(QueryError::InvalidSql(msg)) => return Err(ToolError::InvalidArgs(msg)),
            Err(e) => return Err(e.into()),
        };
        let columns: Vec<&str> = result.columns.iter().map(|c| c.name.as_str()).collect();
        sluice_pdk::to_result(&json!({
            "columns": columns,
            "rows": rows_as_arrays(&result),
            "truncated": result.truncated,
        }))
    }
}

sluice_pdk::export_tool!(RunAnalysis);
