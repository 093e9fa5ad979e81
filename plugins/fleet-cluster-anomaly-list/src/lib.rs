//! `fleet.cluster.anomaly_list`: recent anomalies, newest first: straggler events (error), low
//! health scores (warn below 0.75, critical below 0.6), memfrag ioctl bursts over 50 (warn) and
//! NCCL collectives over 60 ms (warn).

use sluice_fleet_common as fleet;
use sluice_pdk::{CallContext, Guest, Json, ToolError, ToolInfo, Value, json, query};

const SQL: &str = include_str!("query.sql");
const DEFAULT_LIMIT: i64 = 100;

struct Tool;

impl Guest for Tool {
    fn describe() -> ToolInfo {
        let args = json!({
            "type": "object",
            "required": ["time_window"],
            "properties": {
                "time_window": fleet::window_schema(),
                "severity_filter": {"enum": ["warn", "error", "critical", "any"], "default": "any",
                                    "description": "The least severity listed."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": DEFAULT_LIMIT},
                "cluster_id": fleet::cluster_schema()
            },
            "additionalProperties": false
        });
        let row = json!({
            "type": "object",
            "required": ["ts", "severity", "summary"],
            "properties": {
                "ts": {"type": "string", "format": "date-time"},
                "severity": {"enum": ["warn", "error", "critical"]},
                "summary": {"type": "string"},
                "cluster_id": {"type": "string"}, "node_id": {"type": "string"}
            }
        });
        sluice_pdk::titled(
            sluice_pdk::rows_tool_of(
                "fleet.cluster.anomaly_list",
                env!("CARGO_PKG_VERSION"),
                "Anomalies in a time window, newest first: straggler events (error), health scores below 0.75 \
                 (warn) or 0.6 (critical), memfrag ioctl bursts over 50 and NCCL collectives over 60 ms (warn).",
                args,
                row,
            ),
            "Cluster anomalies",
        )
    }

    fn call(_ctx: CallContext, args: String) -> Result<String, ToolError> {
        let args: Json = sluice_pdk::parse_args(&args)?;
        let [cluster, window] = fleet::filter_params(&args)?;
        let least = match args.get("severity_filter").and_then(Json::as_str).unwrap_or("any") {
            "critical" => 3,
            "error" => 2,
            _ => 1,
        };
        let limit = args.get("limit").and_then(Json::as_i64).unwrap_or(DEFAULT_LIMIT);
        let params = [cluster, window, Value::Int64(least), Value::Int64(limit)];
        sluice_pdk::rows_result(&query(&SQL.replace("@FILTER@", fleet::FILTER), &params)?)
    }
}

sluice_pdk::export_tool!(Tool);
