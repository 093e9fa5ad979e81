//! `fleet.cluster.summary`: per-node health-score statistics and event counts.

use sluice_pdk::{CallContext, Guest, Json, ToolError, ToolInfo, json, opt_text, query, rows_as_objects};

/// The whole tool is this one query; `?1` is the optional cluster filter.
const SQL: &str = "\
SELECT cluster_id, node_id,
       count(*) FILTER (WHERE metric_name = 'ingero.node.health_score')            AS health_samples,
       round(avg(value_double) FILTER (WHERE metric_name = 'ingero.node.health_score'), 6) AS health_avg,
       min(value_double) FILTER (WHERE metric_name = 'ingero.node.health_score')   AS health_min,
       max(value_double) FILTER (WHERE metric_name = 'ingero.node.health_score')   AS health_max,
       count(*) FILTER (WHERE metric_name = 'ingero.node.straggler_event')         AS straggler_events,
       coalesce(sum(value_double) FILTER (WHERE metric_name = 'gpu.memfrag.ioctl_event_total'), 0) AS memfrag_ioctl_events,
       coalesce(sum(value_double) FILTER (WHERE metric_name = 'gpu.kernel.launch.count'), 0)      AS kernel_launches,
       count(*)                                                                    AS events
FROM events
WHERE ?1 IS NULL OR cluster_id = ?1
GROUP BY cluster_id, node_id
ORDER BY cluster_id, node_id";

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
