//! The export envelope and the size policy.
//!
//! One document per export (per part):
//! `{"schemaVersion":"sluice.export/v1","export","checksum","generation","partIndex","partTotal",
//! "itemCount","exportedAt","cluster","items"}`. Items are put in a canonical order (by their
//! canonical JSON: object keys sorted, no insignificant whitespace) before hashing, so the same
//! data always gives the same checksum, whatever order the query returned it in.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The envelope's schema version.
pub const SCHEMA_VERSION: &str = "sluice.export/v1";
/// Default cap on one payload (1.5 MiB), as configured.
pub use crate::config::DEFAULT_MAX_EXPORT_BYTES;
/// A payload this large is worth a warning (1 MiB).
pub const SPILL_WARN_BYTES: usize = 1 << 20;
/// So many items in one export are worth a warning (`ExportShardWarning`).
pub const SHARD_WARN_ITEMS: usize = 1_800;

/// `value` as canonical JSON: object keys sorted (recursively), no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A snapshot's items in canonical order (each as canonical JSON) and their checksum: the
/// SHA-256 (hex) of the canonical JSON array of the sorted items.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Canonical JSON of each item, sorted.
    pub items: Vec<String>,
    pub checksum: String,
}

impl Snapshot {
    pub fn new(items: &[Value]) -> Self {
        let mut items: Vec<String> = items.iter().map(canonical_json).collect();
        items.sort_unstable();
        let mut h = Sha256::new();
        h.update(b"[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                h.update(b",");
            }
            h.update(item.as_bytes());
        }
        h.update(b"]");
        Self { items, checksum: hex::encode(h.finalize()) }
    }
}

/// Who an envelope is about.
#[derive(Debug, Clone)]
pub struct EnvelopeMeta<'a> {
    pub export: &'a str,
    pub cluster: &'a str,
    pub generation: u64,
    /// RFC 3339.
    pub exported_at: &'a str,
}

/// One envelope, serialised, with what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub index: usize,
    pub total: usize,
    pub item_count: usize,
    pub json: String,
}

/// What the size policy decided for a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Deliver these parts in order (one part when the whole fits).
    Parts(Vec<Part>),
    /// The sink takes only whole payloads and the whole does not fit: store it in the bound
    /// object-store sink and send the sink a pointer to it.
    Spill(Part),
}

/// Why a snapshot cannot be delivered to a sink (both terminal: no retry helps).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizeError {
    /// One item alone is over the cap, and the sink cannot take it another way.
    #[error("an item of {bytes} bytes does not fit the {cap}-byte cap even in a part of its own")]
    PayloadTooLarge { bytes: usize, cap: usize },
    /// The payload is over the cap, the sink takes only whole payloads, and no object-store sink
    /// is bound to spill to.
    #[error("the payload of {bytes} bytes is over the {cap}-byte cap; bind an object-store sink to spill to")]
    SpillRequired { bytes: usize, cap: usize },
}

/// Warnings the size policy raises (metrics and status, never a failure).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Warnings {
    /// The whole payload is at least [`SPILL_WARN_BYTES`].
    pub large: bool,
    /// At least [`SHARD_WARN_ITEMS`] items.
    pub shard: bool,
}

/// How a sink takes large payloads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinkShape {
    /// The sink can take an export in several parts.
    pub accepts_parts: bool,
    /// An object-store sink is bound to spill to.
    pub spill_available: bool,
}

fn envelope(meta: &EnvelopeMeta<'_>, checksum: &str, index: usize, total: usize, items: &[String]) -> String {
    let head = serde_json::json!({
        "schemaVersion": SCHEMA_VERSION,
        "export": meta.export,
        "checksum": checksum,
        "generation": meta.generation,
        "partIndex": index,
        "partTotal": total,
        "itemCount": items.len(),
        "exportedAt": meta.exported_at,
        "cluster": meta.cluster,
    })
    .to_string();
    // The items are already canonical JSON: splice them in instead of parsing them again.
    let mut out = String::with_capacity(head.len() + 12 + items.iter().map(|i| i.len() + 1).sum::<usize>());
    out.push_str(&head[..head.len() - 1]);
    out.push_str(",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push_str("]}");
    out
}

/// Plans the delivery of a snapshot under `cap` bytes a payload.
pub fn plan(snapshot: &Snapshot, meta: &EnvelopeMeta<'_>, cap: usize, sink: SinkShape) -> (Result<Plan, SizeError>, Warnings) {
    let whole = envelope(meta, &snapshot.checksum, 0, 1, &snapshot.items);
    let warnings = Warnings { large: whole.len() >= SPILL_WARN_BYTES, shard: snapshot.items.len() >= SHARD_WARN_ITEMS };
    if whole.len() <= cap {
        return (Ok(Plan::Parts(vec![Part { index: 0, total: 1, item_count: snapshot.items.len(), json: whole }])), warnings);
    }
    if !sink.accepts_parts {
        let result = if sink.spill_available {
            Ok(Plan::Spill(Part { index: 0, total: 1, item_count: snapshot.items.len(), json: whole }))
        } else {
            Err(SizeError::SpillRequired { bytes: whole.len(), cap })
        };
        return (result, warnings);
    }
    // Greedy split: as many items as fit a part. The envelope's head grows by at most a few
    // digits once the part numbers are known, so plan against the largest head.
    let overhead = envelope(meta, &snapshot.checksum, usize::MAX / 2, usize::MAX / 2, &[]).len() + 8;
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut start, mut size) = (0, overhead);
    for (i, item) in snapshot.items.iter().enumerate() {
        if overhead + item.len() + 1 > cap {
            if !sink.spill_available {
                return (Err(SizeError::PayloadTooLarge { bytes: item.len(), cap }), warnings);
            }
            return (Ok(Plan::Spill(Part { index: 0, total: 1, item_count: snapshot.items.len(), json: whole })), warnings);
        }
        if size + item.len() + 1 > cap && i > start {
            groups.push(start..i);
            (start, size) = (i, overhead);
        }
        size += item.len() + 1;
    }
    groups.push(start..snapshot.items.len());
    let total = groups.len();
    let parts = groups
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let items = &snapshot.items[r];
            Part { index, total, item_count: items.len(), json: envelope(meta, &snapshot.checksum, index, total, items) }
        })
        .collect();
    (Ok(Plan::Parts(parts)), warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> EnvelopeMeta<'static> {
        EnvelopeMeta { export: "nodes", cluster: "c1", generation: 7, exported_at: "2026-11-22T10:00:00Z" }
    }

    #[test]
    fn the_checksum_ignores_item_and_key_order_but_not_content() {
        let a = Snapshot::new(&[json!({"b": 1, "a": [1, {"y": 2, "x": 1}]}), json!({"k": "v"})]);
        let b = Snapshot::new(&[json!({"k": "v"}), json!({"a": [1, {"x": 1, "y": 2}], "b": 1})]);
        assert_eq!(a.checksum, b.checksum);
        assert_eq!(a.items, b.items);
        let c = Snapshot::new(&[json!({"k": "v"}), json!({"a": [{"x": 1, "y": 2}, 1], "b": 1})]);
        assert_ne!(a.checksum, c.checksum, "array order is content");
        assert_eq!(canonical_json(&json!({"b": "é\"", "a": null})), r#"{"a":null,"b":"é\""}"#);
        let empty = Snapshot::new(&[]);
        assert_eq!(empty.checksum, hex::encode(Sha256::digest(b"[]")));
    }

    #[test]
    fn a_payload_under_the_cap_is_one_envelope_with_every_field() {
        let snap = Snapshot::new(&[json!({"n": 2}), json!({"n": 1})]);
        let (plan, warnings) = plan(&snap, &meta(), DEFAULT_MAX_EXPORT_BYTES, SinkShape { accepts_parts: true, spill_available: false });
        assert_eq!(warnings, Warnings::default());
        let Ok(Plan::Parts(parts)) = plan else { panic!("{plan:?}") };
        assert_eq!(parts.len(), 1);
        let v: Value = serde_json::from_str(&parts[0].json).unwrap();
        assert_eq!(
            v,
            json!({"schemaVersion": "sluice.export/v1", "export": "nodes", "checksum": snap.checksum, "generation": 7,
                   "partIndex": 0, "partTotal": 1, "itemCount": 2, "exportedAt": "2026-11-22T10:00:00Z",
                   "cluster": "c1", "items": [{"n": 1}, {"n": 2}]})
        );
    }

    #[test]
    fn over_the_cap_splits_into_parts_under_it_losing_nothing() {
        let items: Vec<Value> = (0..500).map(|i| json!({"id": i, "pad": "x".repeat(90)})).collect();
        let snap = Snapshot::new(&items);
        let cap = 8_000;
        let (plan, warnings) = plan(&snap, &meta(), cap, SinkShape { accepts_parts: true, spill_available: false });
        assert!(!warnings.large && !warnings.shard);
        let Ok(Plan::Parts(parts)) = plan else { panic!("{plan:?}") };
        assert!(parts.len() > 1);
        let mut seen = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.json.len() <= cap, "part {i} is {} bytes", p.json.len());
            let v: Value = serde_json::from_str(&p.json).unwrap();
            assert_eq!((v["partIndex"].as_u64(), v["partTotal"].as_u64()), (Some(i as u64), Some(parts.len() as u64)));
            assert_eq!(v["checksum"], snap.checksum);
            assert_eq!(v["itemCount"].as_u64(), Some(p.item_count as u64));
            seen.extend(v["items"].as_array().unwrap().iter().map(canonical_json));
        }
        assert_eq!(seen, snap.items, "every item once, in canonical order");
    }

    #[test]
    fn whole_payload_sinks_spill_or_fail_terminally_never_drop() {
        let items: Vec<Value> = (0..100).map(|i| json!({"id": i, "pad": "y".repeat(100)})).collect();
        let snap = Snapshot::new(&items);
        let whole_only = SinkShape { accepts_parts: false, spill_available: false };
        let (r, _) = plan(&snap, &meta(), 4_000, whole_only);
        assert!(matches!(r, Err(SizeError::SpillRequired { cap: 4_000, .. })), "{r:?}");
        let (r, _) = plan(&snap, &meta(), 4_000, SinkShape { accepts_parts: false, spill_available: true });
        let Ok(Plan::Spill(part)) = r else { panic!("{r:?}") };
        assert_eq!(part.item_count, 100);
        // One item over the cap: a parts sink cannot help either.
        let huge = Snapshot::new(&[json!({"blob": "z".repeat(10_000)})]);
        let (r, _) = plan(&huge, &meta(), 4_000, SinkShape { accepts_parts: true, spill_available: false });
        assert!(matches!(r, Err(SizeError::PayloadTooLarge { cap: 4_000, .. })), "{r:?}");
    }

    #[test]
    fn large_and_many_item_exports_warn() {
        let items: Vec<Value> = (0..2_000).map(|i| json!({"id": i, "pad": "w".repeat(600)})).collect();
        let (r, warnings) = plan(&Snapshot::new(&items), &meta(), 4 << 20, SinkShape { accepts_parts: true, spill_available: false });
        assert!(r.is_ok());
        assert_eq!(warnings, Warnings { large: true, shard: true });
    }
}
