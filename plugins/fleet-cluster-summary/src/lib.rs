//! `fleet.cluster.summary`: per-node health-score statistics and event counts.

use sluice_pdk::{CallContext, Guest, Json, ToolError, ToolInfo, json, opt_text, query, rows_as_objects};

/// The whole tool is this one query; `?1` is the optional cluster filter. (The benchmark runs
/// the same file natively as its baseline.)
const SQL: &str = include_str!("summary.sql");

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    cluster_id: Option<String>,
}

struct Summary;

impl Guest for Summary {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "fleet.cluster.summary".into(),
            description: "Per-node summary of a cluster (or of every cluster): health-score \
                          statistics, straggler events, memfrag ioctls, kernel launches."
                .into(),
            version: env!("CARGO_PKG_VERSION").into(),
            input_schema: json!({
                "type": "object",
                "title": "Cluster summary",
                "properties": {
                    "cluster_id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$",
                                   "description": "Only this cluster; all clusters when absent."}
                },
                "additionalProperties": false
            })
            .to_string(),
            output_schema: output_schema().to_string(),
            allow_tenant_scoped: true,
        }
    }

    fn call(_ctx: CallContext, args: String) -> Result<String, ToolError> {
        let args: Args = sluice_pdk::parse_args(&args)?;
        let result = query(SQL, &[opt_text(args.cluster_id.as_deref())])?;
        sluice_pdk::to_result(&json!({ "rows": rows_as_objects(&result) }))
    }
}

fn output_schema() -> Json {
    let num = json!({"type": ["number", "null"]});
    json!({
        "type": "object",
        "required": ["rows"],
        "properties": {
            "rows": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "cluster_id": {"type": "string"},
                    "node_id": {"type": "string"},
                    "health_samples": {"type": "integer"},
                    "health_avg": num, "health_min": num, "health_max": num,
                    "straggler_events": {"type": "integer"},
                    "memfrag_ioctl_events": {"type": "number"},
                    "kernel_launches": {"type": "number"},
                    "events": {"type": "integer"}
                }
            }}
        }
    })
}

sluice_pdk::export_tool!(Summary);
