//! `fleet.cluster.find_outlier_nodes`: nodes far from their cluster's distribution on a metric,
//! by robust z-score: (node average − cluster median) / (1.4826 · MAD) beyond ±z.

use sluice_fleet_common as fleet;
use sluice_pdk::{CallContext, Guest, Json, ToolError, ToolInfo, Value, json, query};

const SQL: &str = include_str!("query.sql");
const DEFAULT_METRIC: &str = "nccl.collective.duration_ms";
const DEFAULT_Z: f64 = 3.5;

struct Tool;

impl Guest for Tool {
    fn describe() -> ToolInfo {
        let args = fleet::args_schema(json!({
            "metric": {"type": "string", "pattern": "^[A-Za-z0-9_.]{1,128}$", "default": DEFAULT_METRIC,
                       "description": "Metric name, e.g. nccl.collective.duration_ms, ingero.node.health_score."},
            "z": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "default": DEFAULT_Z,
                  "description": "Robust z-score beyond which a node is an outlier."}
        }));
        let num = json!({"type": ["number", "null"]});
        let row = json!({
            "type": "object",
            "properties": {
                "cluster_id": {"type": "string"}, "node_id": {"type": "string"}, "metric": {"type": "string"},
                "samples": {"type": "integer"}, "value": num, "cluster_median": num, "cluster_mad": num,
                "robust_z": num, "direction": {"enum": ["high", "low"]}
            }
        });
        sluice_pdk::titled(
            sluice_pdk::rows_tool_of(
                "fleet.cluster.find_outlier_nodes",
                env!("CARGO_PKG_VERSION"),
                "Nodes whose average of a metric is far from their cluster's median: robust z-score \
                 (value - median) / (1.4826 * MAD) beyond z, most extreme first.",
                args,
                row,
            ),
            "Outlier nodes by metric",
        )
    }

    fn call(_ctx: CallContext, args: String) -> Result<String, ToolError> {
        let args: Json = sluice_pdk::parse_args(&args)?;
        let [cluster, window] = fleet::filter_params(&args)?;
        let metric = Value::Text(args.get("metric").and_then(Json::as_str).unwrap_or(DEFAULT_METRIC).to_owned());
        let z = Value::Float64(fleet::number(&args, "z", DEFAULT_Z));
        sluice_pdk::rows_result(&query(&SQL.replace("@FILTER@", fleet::FILTER), &[cluster, window, metric, z])?)
    }
}

sluice_pdk::export_tool!(Tool);
