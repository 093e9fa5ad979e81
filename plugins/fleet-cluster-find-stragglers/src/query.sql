WITH node AS (
    SELECT cluster_id, node_id, avg(value_double) AS health, count(*) AS samples
    FROM events
    WHERE metric_name = 'ingero.node.health_score' AND @FILTER@
    GROUP BY cluster_id, node_id
), stats AS (
    SELECT cluster_id, median(health) AS med, mad(health) AS mad FROM node GROUP BY cluster_id
)
SELECT n.cluster_id, n.node_id, n.samples,
       round(n.health, 6) AS health_avg,
       round(s.med, 6) AS cluster_median,
       round(s.mad, 6) AS cluster_mad,
       round(s.med - ?3 * s.mad, 6) AS threshold
FROM node n JOIN stats s USING (cluster_id)
WHERE n.health < s.med - ?3 * s.mad
ORDER BY n.cluster_id, n.health, n.node_id
