WITH scoped AS (
    SELECT * FROM events WHERE @FILTER@
), anomalies AS (
    SELECT ts, cluster_id, node_id, 'error' AS severity,
           format('straggler event on {} ({})', node_id, coalesce(json_extract_string(attributes, '$.reason'), 'no reason given')) AS summary
    FROM scoped WHERE metric_name = 'ingero.node.straggler_event'
    UNION ALL
    SELECT ts, cluster_id, node_id, CASE WHEN value_double < 0.6 THEN 'critical' ELSE 'warn' END,
           format('health score {:.3f} on {}', value_double, node_id)
    FROM scoped WHERE metric_name = 'ingero.node.health_score' AND value_double < 0.75
    UNION ALL
    SELECT ts, cluster_id, node_id, 'warn',
           format('{} memfrag ioctls ({}) on {}', CAST(value_double AS BIGINT), coalesce(json_extract_string(attributes, '$.command'), '?'), node_id)
    FROM scoped WHERE metric_name = 'gpu.memfrag.ioctl_event_total' AND value_double > 50
    UNION ALL
    SELECT ts, cluster_id, node_id, 'warn',
           format('NCCL collective took {:.1f} ms on {}', value_double, node_id)
    FROM scoped WHERE metric_name = 'nccl.collective.duration_ms' AND value_double > 60
)
SELECT ts, severity, summary, cluster_id, node_id
FROM anomalies
WHERE CASE severity WHEN 'critical' THEN 3 WHEN 'error' THEN 2 ELSE 1 END >= ?3
ORDER BY ts DESC, CASE severity WHEN 'critical' THEN 3 WHEN 'error' THEN 2 ELSE 1 END DESC, cluster_id, node_id, summary
LIMIT ?4
