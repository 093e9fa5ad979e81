//! What the `fleet.cluster.*` tools share: argument schemas, time windows and the row filter
//! every query of theirs starts from.
//!
//! Every tool's SQL takes `?1` = the cluster (`NULL`: all the caller may see) and `?2` = the
//! window in microseconds (`NULL`: all data). A window counts back from the newest event in the
//! store (for live data, about now), so analyses of an older store keep working.

use sluice_pdk::{Json, ToolError, Value, json, opt_text};

/// The filter of `?1` (cluster) and `?2` (window, µs), for a `WHERE` over `events`.
pub const FILTER: &str = "(?1 IS NULL OR cluster_id = ?1) \
     AND (?2 IS NULL OR ts >= (SELECT max(ts) FROM events) - to_microseconds(?2))";

/// JSON Schema of `cluster_id`.
pub fn cluster_schema() -> Json {
    json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$", "description": "Only this cluster; all (that the caller may see) when absent."})
}

/// JSON Schema of `time_window`.
pub fn window_schema() -> Json {
    json!({"type": "string", "pattern": "^[0-9hdms]{1,16}$",
           "description": "How far back from the newest event, e.g. `24h`, `7d`, `1d12h`, `90m`, `30s`; all data when absent."})
}

/// The input schema of a fleet tool: `cluster_id` and `time_window`, plus `extra` properties.
pub fn args_schema(extra: Json) -> Json {
    let mut properties = json!({"cluster_id": cluster_schema(), "time_window": window_schema()});
    if let (Some(p), Json::Object(e)) = (properties.as_object_mut(), extra) {
        p.extend(e);
    }
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// `1d12h` → microseconds. Units: `d`, `h`, `m`, `s`; each needs a number before it.
pub fn window_micros(s: &str) -> Result<i64, ToolError> {
    let bad = || ToolError::InvalidArgs(format!("time_window {s:?} is not like 24h, 7d, 1d12h, 90m or 30s"));
    let (mut total, mut n, mut digits) = (0i64, 0i64, false);
    for c in s.chars() {
        match c {
            '0'..='9' => {
                n = n.checked_mul(10).and_then(|n| n.checked_add(i64::from(c as u8 - b'0'))).ok_or_else(bad)?;
                digits = true;
            }
            'd' | 'h' | 'm' | 's' if digits => {
                let unit = match c {
                    'd' => 86_400,
                    'h' => 3_600,
                    'm' => 60,
                    _ => 1,
                };
                total = n.checked_mul(unit * 1_000_000).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
                (n, digits) = (0, false);
            }
            _ => return Err(bad()),
        }
    }
    if digits || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// `?1` and `?2` from `cluster_id` and `time_window` of `args`.
pub fn filter_params(args: &Json) -> Result<[Value; 2], ToolError> {
    let window = match args.get("time_window").and_then(Json::as_str) {
        Some(w) => Value::Int64(window_micros(w)?),
        None => Value::Null,
    };
    Ok([opt_text(args.get("cluster_id").and_then(Json::as_str)), window])
}

/// A number argument, or its default.
pub fn number(args: &Json, key: &str, default: f64) -> f64 {
    args.get(key).and_then(Json::as_f64).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::window_micros;

    #[test]
    fn windows() {
        assert_eq!(window_micros("24h").unwrap(), 24 * 3_600_000_000);
        assert_eq!(window_micros("1d12h").unwrap(), 36 * 3_600_000_000);
        assert_eq!(window_micros("90m").unwrap(), 5_400_000_000);
        assert_eq!(window_micros("30s").unwrap(), 30_000_000);
        for bad in ["", "h", "24", "1hh", "0h", "99999999999999d", "1x"] {
            assert!(window_micros(bad).is_err(), "{bad}");
        }
    }
}
