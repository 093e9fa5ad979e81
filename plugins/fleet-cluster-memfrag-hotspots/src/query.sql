SELECT cluster_id, node_id,
       coalesce(json_extract_string(attributes, '$.command'), '') AS command,
       count(*) AS samples,
       sum(value_double) AS ioctl_events,
       max(value_double) AS peak
FROM events
WHERE metric_name = 'gpu.memfrag.ioctl_event_total' AND @FILTER@
GROUP BY ALL
ORDER BY ioctl_events DESC, cluster_id, node_id, command
LIMIT ?3
