WITH node AS (
    SELECT cluster_id, node_id, avg(value_double) AS value, count(*) AS samples
    FROM events
    WHERE metric_name = ?3 AND value_double IS NOT NULL AND @FILTER@
    GROUP BY cluster_id, node_id
), stats AS (
    SELECT cluster_id, median(value) AS med, mad(value) AS mad FROM node GROUP BY cluster_id
), scored AS (
    SELECT n.*, s.med, s.mad,
           CASE WHEN s.mad > 0 THEN (n.value - s.med) / (1.4826 * s.mad) END AS robust_z
    FROM node n JOIN stats s USING (cluster_id)
)
SELECT cluster_id, node_id, ?3 AS metric, samples,
       round(value, 6) AS value, round(med, 6) AS cluster_median, round(mad, 6) AS cluster_mad,
       round(robust_z, 3) AS robust_z,
       CASE WHEN value > med THEN 'high' ELSE 'low' END AS direction
FROM scored
WHERE abs(robust_z) > ?4
ORDER BY cluster_id, abs(robust_z) DESC, node_id
