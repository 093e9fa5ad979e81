SELECT cluster_id, node_id, metric_name,
       count(*) AS samples,
       sum(value_double) AS total,
       round(avg(value_double), 6) AS mean,
       min(value_double) AS min,
       max(value_double) AS max,
       round(quantile_cont(value_double, 0.95), 6) AS p95
FROM events
WHERE metric_name LIKE 'gpu.kernel.launch.%' AND @FILTER@
GROUP BY ALL
ORDER BY cluster_id, node_id, metric_name
