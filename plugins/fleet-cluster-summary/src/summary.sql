SELECT cluster_id, node_id,
       count(*) FILTER (WHERE metric_name = 'ingero.node.health_score')                   AS health_samples,
       round(avg(value_double) FILTER (WHERE metric_name = 'ingero.node.health_score'), 6) AS health_avg,
       min(value_double) FILTER (WHERE metric_name = 'ingero.node.health_score')          AS health_min,
       max(value_double) FILTER (WHERE metric_name = 'ingero.node.health_score')          AS health_max,
       count(*) FILTER (WHERE metric_name = 'ingero.node.straggler_event')                AS straggler_events,
       coalesce(sum(value_double) FILTER (WHERE metric_name = 'gpu.memfrag.ioctl_event_total'), 0) AS memfrag_ioctl_events,
       coalesce(sum(value_double) FILTER (WHERE metric_name = 'gpu.kernel.launch.count'), 0)      AS kernel_launches,
       count(*)                                                                           AS events
FROM events
WHERE ?1 IS NULL OR cluster_id = ?1
GROUP BY cluster_id, node_id
ORDER BY cluster_id, node_id
