//! `fleet.cluster.kernel_launch_summary`: per node and `gpu.kernel.launch.*` metric, count, total,
//! mean, min, max and p95.

use sluice_fleet_common as fleet;
use sluice_pdk::{CallContext, Guest, Json, ToolError, ToolInfo, json, query};

const SQL: &str = include_str!("query.sql");

struct Tool;

impl Guest for Tool {
    fn describe() -> ToolInfo {
        let args = fleet::args_schema(json!({}));
        let num = json!({"type": ["number", "null"]});
        let row = json!({
            "type": "object",
            "properties": {
                "cluster_id": {"type": "string"}, "node_id": {"type": "string"}, "metric_name": {"type": "string"},
                "samples": {"type": "integer"}, "total": num, "mean": num, "min": num, "max": num, "p95": num
            }
        });
        sluice_pdk::titled(
            sluice_pdk::rows_tool_of(
                "fleet.cluster.kernel_launch_summary",
                env!("CARGO_PKG_VERSION"),
                "Kernel launches per node: for each gpu.kernel.launch.* metric, samples, total, mean, min, max, p95.",
                args,
                row,
            ),
            "Kernel launch summary",
        )
    }

    fn call(_ctx: CallContext, args: String) -> Result<String, ToolError> {
        let args: Json = sluice_pdk::parse_args(&args)?;
        let params = fleet::filter_params(&args)?;
        sluice_pdk::rows_result(&query(&SQL.replace("@FILTER@", fleet::FILTER), &params)?)
    }
}

sluice_pdk::export_tool!(Tool);
