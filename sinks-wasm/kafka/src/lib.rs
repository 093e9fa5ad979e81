//! The `kafka` sink: produces each export to a Kafka topic.
//!
//! One record per envelope (`mode = "envelope"`, the default) or one per item (`mode = "item"`),
//! keyed `<cluster>/<export>` (so an export's records stay in order on one partition), with the
//! headers `sluice-idempotency-key` (`<export>/<generation>/<part>[/<item>]`: a retry carries the
//! same key, so consumers can drop repeats), `sluice-checksum`, `sluice-generation` and
//! `content-type`. Produced with acks = all. The probe asks the brokers for metadata and checks
//! that the topic exists.
//!
//! Settings: `brokers` (`host:port`, comma-separated), `topic`, `mode`, `partition` (default: the
//! key's partition, as Kafka's default partitioner picks it). Plain TCP through `wasi:sockets`
//! (the host allows only the configured brokers: list every broker the cluster advertises).

use sluice_sink_common::*;

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use rskafka::client::error::ProtocolError;
use futures_util::StreamExt as _;
use serde_json::value::RawValue;

struct KafkaSink;

/// Records per produce request are cut at about this many bytes.
const BATCH_BYTES: usize = 512 * 1024;
/// Produce requests in flight at once on the connection (sent in order, answered in order).
/// wasi:sockets passes at most 64 KiB per write and offers no no-delay flag, so a request's last
/// small segment can wait for the broker's delayed ACK (Nagle); with the next request already
/// being written behind it, it does not (measured in the `sinks` benchmark: 4 in flight make the
/// sink about 4× faster than one at a time).
const IN_FLIGHT: usize = 4;

/// Kafka's answers: authorization failures are forbidden; records the broker will never take
/// and missing topics terminal; connection trouble and the rest transient.
fn classify(e: rskafka::client::error::Error, what: &str) -> SinkError {
    use rskafka::client::error::Error;
    if let Error::ServerError { protocol_error, error_message, .. } = &e {
        let detail = error_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        let message = format!("{what}: {protocol_error}{detail}");
        return match protocol_error {
            ProtocolError::TopicAuthorizationFailed | ProtocolError::ClusterAuthorizationFailed => {
                error(ErrorClass::Forbidden, message)
            }
            ProtocolError::SaslAuthenticationFailed => terminal(message),
            ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge => {
                terminal(format!("{message} (lower the export's max_export_bytes or use mode = \"item\")"))
            }
            ProtocolError::UnknownTopicOrPartition => terminal(format!("{message} (create the topic first)")),
            ProtocolError::InvalidRecord | ProtocolError::CorruptMessage => terminal(message),
            _ => error(ErrorClass::Transient, message),
        };
    }
    error(ErrorClass::Transient, format!("{what}: {e}"))
}

/// Kafka's default partitioner: murmur2 of the key, positive, modulo the partition count.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The brokers to bootstrap from, each checked to be `host:port`.
fn brokers(config: &SinkConfig) -> Result<Vec<String>, SinkError> {
    let list = setting(config, "brokers").ok_or_else(|| terminal("the `brokers` setting is missing"))?;
    let mut out = Vec::new();
    for b in list.split([',', ' ']).filter(|b| !b.is_empty()) {
        let (host, port) = b.rsplit_once(':').ok_or_else(|| terminal(format!("broker {b:?} is not host:port")))?;
        let port: u16 = port.parse().map_err(|_| terminal(format!("broker {b:?}: bad port")))?;
        // Names are resolved here (the host allows their addresses); rskafka gets addresses.
        let addr = sluice_sink_common::resolve(host, port).map_err(|e| error(ErrorClass::Transient, e))?;
        out.push(addr[0].to_string());
    }
    if out.is_empty() {
        return Err(terminal("the `brokers` setting names no broker"));
    }
    Ok(out)
}

async fn connect(config: &SinkConfig) -> Result<Client, SinkError> {
    let brokers = brokers(config)?;
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(Duration::from_secs(5)),
    };
    ClientBuilder::new(brokers.clone())
        .client_id("sluice")
        .backoff_config(backoff)
        .build()
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("ermission denied") || text.contains("ccess denied") {
                terminal(format!("connecting to {brokers:?}: the host refused the connection (not allowed for this sink)"))
            } else {
                classify(e, &format!("connecting to {brokers:?}"))
            }
        })
}

fn topic(config: &SinkConfig) -> Result<&str, SinkError> {
    setting(config, "topic").filter(|t| !t.is_empty()).ok_or_else(|| terminal("the `topic` setting is missing"))
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

async fn deliver(config: &SinkConfig, request: &ExportRequest) -> Result<Receipt, SinkError> {
    if request.format != "json" {
        return Err(terminal(format!("format {:?} is not accepted (json only)", request.format)));
    }
    let topic = topic(config)?;
    let per_item = match setting(config, "mode").unwrap_or("envelope") {
        "envelope" => false,
        "item" => true,
        other => return Err(terminal(format!("mode {other:?} is not `envelope` or `item`"))),
    };
    // Values as raw JSON text (items are not parsed into trees); records are made batch by batch,
    // so a large export does not hold every record at once.
    let values: Vec<&[u8]> = if per_item {
        let envelope: Envelope =
            serde_json::from_slice(&request.payload).map_err(|e| terminal(format!("the payload is not an export envelope: {e}")))?;
        envelope.items.into_iter().map(|i| i.get().as_bytes()).collect()
    } else {
        vec![&request.payload]
    };
    let key = format!("{}/{}", request.cluster, request.export);
    let id = format!("{}/{}/{}", request.export, request.generation, request.part_index);
    let now = chrono::Utc::now();
    let record = |i: usize, value: &[u8]| Record {
        key: Some(key.clone().into_bytes()),
        value: Some(value.to_vec()),
        headers: BTreeMap::from([
            ("sluice-idempotency-key".to_owned(), if per_item { format!("{id}/{i}") } else { id.clone() }.into_bytes()),
            ("sluice-checksum".to_owned(), request.checksum.clone().into_bytes()),
            ("sluice-generation".to_owned(), request.generation.to_string().into_bytes()),
            ("content-type".to_owned(), b"application/json".to_vec()),
        ]),
        timestamp: now,
    };

    let client = connect(config).await?;
    let partition = match setting(config, "partition") {
        Some(p) => p.parse::<i32>().map_err(|_| terminal(format!("partition {p:?} is not a number")))?,
        None => {
            let topics = client.list_topics().await.map_err(|e| classify(e, "reading the cluster's metadata"))?;
            let t = topics
                .iter()
                .find(|t| t.name == topic)
                .ok_or_else(|| terminal(format!("topic {topic:?} does not exist (create it first)")))?;
            let n = t.partitions.len().max(1) as i32;
            (murmur2(key.as_bytes()) & 0x7fff_ffff) % n
        }
    };
    let producer = client
        .partition_client(topic, partition, UnknownTopicHandling::Error)
        .await
        .map_err(|e| classify(e, &format!("finding the leader of {topic}/{partition}")))?;
    // Batches in order, made as they are sent; a failed batch fails the delivery (retried
    // whole: the idempotency keys let consumers drop what arrived twice).
    let mut start = 0;
    let batches = std::iter::from_fn(|| {
        if start >= values.len() {
            return None;
        }
        let (mut batch, mut size) = (Vec::new(), 0);
        while start < values.len() && (batch.is_empty() || size < BATCH_BYTES) {
            let r = record(start, values[start]);
            size += r.approximate_size();
            batch.push(r);
            start += 1;
        }
        Some(batch)
    });
    let mut sent = futures_util::stream::iter(batches)
        .map(|batch| producer.produce(batch, Compression::NoCompression))
        .buffered(IN_FLIGHT);
    let (mut first, mut last) = (None, None);
    while let Some(offsets) = sent.next().await {
        let offsets = offsets.map_err(|e| classify(e, &format!("producing to {topic}/{partition}")))?;
        first = first.or(offsets.first().copied());
        last = offsets.last().copied().or(last);
    }
    Ok(Receipt {
        location: format!(
            "kafka {topic}/{partition} offsets {}..={} ({} record(s))",
            first.unwrap_or_default(),
            last.unwrap_or_default(),
            values.len()
        ),
    })
}

impl Guest for KafkaSink {
    fn describe() -> SinkInfo {
        SinkInfo {
            sink_type: "kafka".into(),
            family: Family::Event,
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Produces each export to a Kafka topic (per envelope or per item), keyed <cluster>/<export>, acks=all.".into(),
            capabilities: Capabilities { stream: true, supports_delete: false, object_store: false, accepts_parts: true },
            formats: vec!["json".into()],
        }
    }

    fn probe(config: SinkConfig) -> Result<String, SinkError> {
        block_on(async {
            let topic = topic(&config)?;
            let client = connect(&config).await?;
            let topics = client.list_topics().await.map_err(|e| classify(e, "reading the cluster's metadata"))?;
            let t = topics
                .iter()
                .find(|t| t.name == topic)
                .ok_or_else(|| terminal(format!("topic {topic:?} does not exist (create it first)")))?;
            Ok(format!("topic {topic} has {} partition(s)", t.partitions.len()))
        })?
    }

    fn export(config: SinkConfig, request: ExportRequest) -> Result<Receipt, SinkError> {
        block_on(deliver(&config, &request))?
    }
}

export_sink!(KafkaSink);

#[cfg(test)]
mod tests {
    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's own partitioner tests (Utils.murmur2).
        assert_eq!(super::murmur2(b"21"), -973932308);
        assert_eq!(super::murmur2(b"foobar"), -790332482);
        assert_eq!(super::murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(super::murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(super::murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
        assert_eq!(super::murmur2(b"abc"), 479470107);
    }
}
