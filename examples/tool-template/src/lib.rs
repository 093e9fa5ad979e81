//! A Sluice tool: one read-only query over the `events` table, answered as rows.

use sluice_pdk::{CallContext, Guest, Json, ToolError, ToolInfo, json, opt_text, query};

const SQL: &str = "SELECT metric_name, count(*) AS events, avg(value_double) AS mean
                   FROM events WHERE ?1 IS NULL OR cluster_id = ?1
                   GROUP BY metric_name ORDER BY metric_name";

struct Tool;

impl Guest for Tool {
    fn describe() -> ToolInfo {
        let args = json!({
            "type": "object",
            "properties": {"cluster_id": {"type": "string", "description": "Only this cluster."}},
            "additionalProperties": false
        });
        sluice_pdk::rows_tool("example.events_by_metric", env!("CARGO_PKG_VERSION"), "Events per metric name.", args)
    }

    fn call(_ctx: CallContext, args: String) -> Result<String, ToolError> {
        let args: Json = sluice_pdk::parse_args(&args)?;
        let result = query(SQL, &[opt_text(args["cluster_id"].as_str())])?;
        sluice_pdk::rows_result(&result)
    }
}

sluice_pdk::export_tool!(Tool);
