//! `fleet.cluster.memfrag_hotspots`: nodes and commands by `gpu.memfrag.ioctl_event_total`.

use sluice_fleet_common as fleet;
use sluice_pdk::{CallContext, Guest, Json, ToolError, ToolInfo, Value, json, query};

const SQL: &str = include_str!("query.sql");
const DEFAULT_LIMIT: i64 = 50;

struct Tool;

impl Guest for Tool {
    fn describe() -> ToolInfo {
        let args = fleet::args_schema(json!({
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": DEFAULT_LIMIT}
        }));
        let row = json!({
            "type": "object",
            "properties": {
                "cluster_id": {"type": "string"}, "node_id": {"type": "string"}, "command": {"type": "string"},
                "samples": {"type": "integer"}, "ioctl_events": {"type": "number"}, "peak": {"type": "number"}
            }
        });
        sluice_pdk::titled(
            sluice_pdk::rows_tool_of(
                "fleet.cluster.memfrag_hotspots",
                env!("CARGO_PKG_VERSION"),
                "Memory-fragmentation hotspots: memfrag ioctl events (gpu.memfrag.ioctl_event_total) per node \
                 and command, most first.",
                args,
                row,
            ),
            "Memory-fragmentation hotspots",
        )
    }

    fn call(_ctx: CallContext, args: String) -> Result<String, ToolError> {
        let args: Json = sluice_pdk::parse_args(&args)?;
        let [cluster, window] = fleet::filter_params(&args)?;
        let limit = Value::Int64(args.get("limit").and_then(Json::as_i64).unwrap_or(DEFAULT_LIMIT));
        sluice_pdk::rows_result(&query(&SQL.replace("@FILTER@", fleet::FILTER), &[cluster, window, limit])?)
    }
}

sluice_pdk::export_tool!(Tool);
