//! `fleet.cluster.find_stragglers`: nodes whose average health score is below their cluster's
//! median − k·MAD (median absolute deviation of the nodes' averages).

use sluice_fleet_common as fleet;
use sluice_pdk::{CallContext, Guest, Json, ToolError, ToolInfo, Value, json, query};

const SQL: &str = include_str!("query.sql");
const DEFAULT_K: f64 = 3.0;

struct Tool;

impl Guest for Tool {
    fn describe() -> ToolInfo {
        let args = fleet::args_schema(json!({
            "k": {"type": "number", "minimum": 0, "maximum": 100, "default": DEFAULT_K,
                  "description": "How many MADs below the cluster median a node must be."}
        }));
        let num = json!({"type": "number"});
        let row = json!({
            "type": "object",
            "properties": {
                "cluster_id": {"type": "string"}, "node_id": {"type": "string"}, "samples": {"type": "integer"},
                "health_avg": num, "cluster_median": num, "cluster_mad": num, "threshold": num
            }
        });
        sluice_pdk::titled(
            sluice_pdk::rows_tool_of(
                "fleet.cluster.find_stragglers",
                env!("CARGO_PKG_VERSION"),
                "Nodes whose average health score is below their cluster's median minus k times the MAD \
                 (median absolute deviation) of the nodes' averages, weakest first.",
                args,
                row,
            ),
            "Straggler nodes",
        )
    }

    fn call(_ctx: CallContext, args: String) -> Result<String, ToolError> {
        let args: Json = sluice_pdk::parse_args(&args)?;
        let [cluster, window] = fleet::filter_params(&args)?;
        let k = Value::Float64(fleet::number(&args, "k", DEFAULT_K));
        sluice_pdk::rows_result(&query(&SQL.replace("@FILTER@", fleet::FILTER), &[cluster, window, k])?)
    }
}

sluice_pdk::export_tool!(Tool);
