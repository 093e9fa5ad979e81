//! Benchmark `sinks`: the WASM sink components against native clients doing the same delivery,
//! on real servers started on loopback in the same run.
//!
//! 1. PostgreSQL: the `postgres` sink delivering 100 000 items (one envelope: connect, create the
//!    table, COPY into a staging table, upsert, prune, commit) vs `psql \copy` of the same rows
//!    into the same table shape. Rows per second; target ratio >= 0.5.
//! 2. Kafka: the `kafka` sink producing 100 000 records (per-item mode) vs a native producer
//!    (rskafka in this process) doing the same work: parse the envelope, make the same records
//!    (key, headers), the same batching (about 512 KiB a request, 4 requests in flight).
//!    Records per second; target ratio >= 0.5.
//!
//! Needs Debian's PostgreSQL and the tansu broker that `scripts/dev test` builds
//! (`SLUICE_TANSU`); run with `scripts/dev bench`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::config::Config;
use sluice::export::envelope::{EnvelopeMeta, Plan, SinkShape, Snapshot, plan};
use sluice::runtime::sinks::{ExportRequest, NetPolicy, SinkConfig};
use sluice::serve::Gateway;

const ITEMS: usize = 100_000;
const ROUNDS: usize = 3;
const PASSWORD: &str = "bench-password";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

#[path = "../../tests/support/pg_server.rs"]
mod pg_server;

use pg_server::{PgServer, free_port};

struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn copy_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

const TABLE: &str = "(export text NOT NULL, item_key text NOT NULL, cluster text NOT NULL, payload jsonb NOT NULL, \
     exported_at timestamptz NOT NULL, generation bigint NOT NULL, PRIMARY KEY (export, item_key))";

fn main() {
    let scratch = std::env::temp_dir().join(format!("sluice-bench-sinks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("plugins")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut config = Config::default();
    config.database.path = scratch.join("bench.duckdb");
    config.plugins.dir = scratch.join("plugins");
    config.plugins.cache_dir = scratch.join("cache");
    config.plugins.watch = false;
    let audit = sluice::audit::AuditLog::file(Path::new("/dev/null")).unwrap();
    let auth = sluice::auth::AuthSource::Static(vec![sluice::auth::AclEntry::token("bench", "bench-token-sinks", &[])]);
    let gateway = rt.block_on(async { Gateway::build(&config, auth, audit).unwrap() });
    let runtime = gateway.runtime().clone();

    // The export: 100 000 items, one envelope as the engine builds it.
    let items: Vec<Value> = (0..ITEMS)
        .map(|i| json!({"id": i, "name": format!("node-{i:06}"), "cluster_id": format!("cluster-{}", i % 8), "value": i as f64 * 1.5}))
        .collect();
    let snapshot = Snapshot::new(&items);
    let meta = EnvelopeMeta { export: "bench", cluster: "cluster-a", generation: 1, exported_at: "2026-11-22T00:00:00Z" };
    let (Ok(Plan::Parts(parts)), _) = plan(&snapshot, &meta, usize::MAX, SinkShape { accepts_parts: true, spill_available: false }) else {
        panic!("planning the envelope");
    };
    let request = ExportRequest {
        export: "bench".into(),
        cluster: "cluster-a".into(),
        generation: 1,
        checksum: snapshot.checksum.clone(),
        part_index: 0,
        part_total: 1,
        item_count: ITEMS as u32,
        format: "json".into(),
        payload: parts[0].json.clone().into_bytes(),
    };
    println!("sinks: {ITEMS} items, envelope of {} bytes", request.payload.len());

    // 1. PostgreSQL.
    std::fs::create_dir_all(scratch.join("pg")).unwrap();
    let pg = PgServer::start(&scratch.join("pg"), PASSWORD);
    let url = pg.url("postgres");
    let sink = runtime.load_sink(&root().join("dist/sinks/postgres.wasm")).expect("dist/sinks/postgres.wasm: run `scripts/dev build`");
    let pg_config = SinkConfig {
        name: "bench".into(),
        settings: vec![("url".into(), url.clone()), ("table".into(), "bench_sink".into()), ("key".into(), "id".into())],
        secrets: vec![("password".into(), PASSWORD.into())],
    };
    let policy = Arc::new(NetPolicy::for_urls([url.as_str()], true));
    // The same rows, as `\copy` reads them.
    let copy_file = scratch.join("rows.copy");
    {
        let mut text = String::with_capacity(request.payload.len() * 2);
        for item in &snapshot.items {
            let parsed: Value = serde_json::from_str(item).unwrap();
            text.push_str("bench\t");
            text.push_str(&parsed["id"].to_string());
            text.push_str("\tcluster-a\t");
            copy_escape(&mut text, item);
            text.push_str("\t2026-11-22 00:00:00+00\t1\n");
        }
        std::fs::write(&copy_file, text).unwrap();
    }
    let (mut sink_times, mut copy_times) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        pg.psql("DROP TABLE IF EXISTS bench_sink; DROP TABLE IF EXISTS bench_copy");
        let started = Instant::now();
        let receipt = rt.block_on(runtime.sink_export(&sink, &pg_config, &request, policy.clone(), Duration::from_secs(300)));
        sink_times.push(started.elapsed());
        let receipt = receipt.expect("the postgres sink failed");
        assert_eq!(pg.psql("SELECT count(*) FROM bench_sink"), ITEMS.to_string(), "{}", receipt.location);

        pg.psql(&format!("CREATE TABLE bench_copy {TABLE}"));
        let started = Instant::now();
        pg.psql(&format!("\\copy bench_copy FROM '{}'", copy_file.display()));
        copy_times.push(started.elapsed());
        assert_eq!(pg.psql("SELECT count(*) FROM bench_copy"), ITEMS.to_string());
        println!("  postgres round {round}: sink {:?}, psql \\copy {:?}", sink_times[round], copy_times[round]);
    }
    let (s, c) = (median(sink_times), median(copy_times));
    let rate = |d: Duration| ITEMS as f64 / d.as_secs_f64();
    println!(
        "postgres: sink {:.0} rows/s ({s:.2?}), psql \\copy {:.0} rows/s ({c:.2?}), ratio {:.2} (target >= 0.5)",
        rate(s),
        rate(c),
        c.as_secs_f64() / s.as_secs_f64()
    );
    drop(pg);

    // 2. Kafka.
    // A broker with in-memory storage (`scripts/dev bench` builds one), so the figure measures the
    // sink; otherwise the tests' broker with SQLite storage, which is slower than either producer.
    let (tansu_bin, storage) = match std::env::var("SLUICE_TANSU_MEMORY") {
        Ok(bin) => (bin, "memory://tansu/"),
        Err(_) => (std::env::var("SLUICE_TANSU").expect("SLUICE_TANSU is not set: run `scripts/dev bench`"), "sqlite://tansu.db"),
    };
    println!("kafka: tansu with {storage} storage");
    let tansu_dir = Path::new("/dev/shm").join(format!("sluice-bench-tansu-{}", std::process::id()));
    let tansu_dir = if std::fs::create_dir_all(&tansu_dir).is_ok() { tansu_dir } else { scratch.clone() };
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("tcp://{addr}");
    let _broker = Tansu(
        Command::new(tansu_bin)
            .current_dir(&tansu_dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sink = runtime.load_sink(&root().join("dist/sinks/kafka.wasm")).expect("dist/sinks/kafka.wasm: run `scripts/dev build`");
    let policy = Arc::new(NetPolicy::for_urls([addr.as_str()], true));
    let kafka_config = |topic: &str| SinkConfig {
        name: "bench".into(),
        settings: vec![("brokers".into(), addr.clone()), ("topic".into(), topic.into()), ("mode".into(), "item".into())],
        secrets: vec![],
    };
    // The native producer does what the sink does with the same payload: parse the envelope
    // (items as raw JSON), make the records batch by batch (same key and headers), produce.
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        items: Vec<&'a serde_json::value::RawValue>,
    }
    let native = |payload: &[u8], topic: String, batch_bytes: usize| {
        let addr = addr.clone();
        let checksum = snapshot.checksum.clone();
        let payload = payload.to_vec();
        async move {
            let envelope: Envelope = serde_json::from_slice(&payload).unwrap();
            let now = rskafka::chrono::Utc::now();
            let client = rskafka::client::ClientBuilder::new(vec![addr]).client_id("bench").build().await.unwrap();
            let pc = client.partition_client(topic, 0, rskafka::client::partition::UnknownTopicHandling::Error).await.unwrap();
            // Batches made as they are sent, four requests in flight, in order: as the sink does.
            let mut start = 0;
            let items = envelope.items;
            let batches = std::iter::from_fn(|| {
                if start >= items.len() {
                    return None;
                }
                let (mut batch, mut size) = (Vec::new(), 0);
                while start < items.len() && (batch.is_empty() || size < batch_bytes) {
                    let r = rskafka::record::Record {
                        key: Some(b"cluster-a/bench".to_vec()),
                        value: Some(items[start].get().as_bytes().to_vec()),
                        headers: BTreeMap::from([
                            ("sluice-idempotency-key".to_owned(), format!("bench/1/0/{start}").into_bytes()),
                            ("sluice-checksum".to_owned(), checksum.clone().into_bytes()),
                            ("sluice-generation".to_owned(), b"1".to_vec()),
                            ("content-type".to_owned(), b"application/json".to_vec()),
                        ]),
                        timestamp: now,
                    };
                    size += r.approximate_size();
                    batch.push(r);
                    start += 1;
                }
                Some(batch)
            });
            use futures_util::StreamExt as _;
            let mut sent = futures_util::stream::iter(batches)
                .map(|b| pc.produce(b, rskafka::client::partition::Compression::NoCompression))
                .buffered(4);
            let mut produced = 0;
            while let Some(offsets) = sent.next().await {
                produced += offsets.unwrap().len();
            }
            produced
        }
    };
    let (mut sink_times, mut native_times) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (sink_topic, native_topic) = (format!("sink-{round}"), format!("native-{round}"));
        rt.block_on(async {
            let client = rskafka::client::ClientBuilder::new(vec![addr.clone()]).build().await.unwrap();
            let controller = client.controller_client().unwrap();
            controller.create_topic(&sink_topic, 1, 1, 5_000).await.unwrap();
            controller.create_topic(&native_topic, 1, 1, 5_000).await.unwrap();
        });
        let started = Instant::now();
        let receipt = rt.block_on(runtime.sink_export(&sink, &kafka_config(&sink_topic), &request, policy.clone(), Duration::from_secs(300)));
        sink_times.push(started.elapsed());
        let receipt = receipt.expect("the kafka sink failed");
        assert!(receipt.location.contains(&format!("({ITEMS} record(s))")), "{}", receipt.location);

        // Native: the same work, the same batching (about 512 KiB a request, 4 in flight), acks = all.
        let started = Instant::now();
        let produced = rt.block_on(native(&request.payload, native_topic.clone(), 512 * 1024));
        native_times.push(started.elapsed());
        assert_eq!(produced, ITEMS);
        println!("  kafka round {round}: sink {:?}, native {:?}", sink_times[round], native_times[round]);
    }
    let (s, n) = (median(sink_times), median(native_times));
    println!(
        "kafka: sink {:.0} records/s ({s:.2?}), native producer {:.0} records/s ({n:.2?}), ratio {:.2} (target >= 0.5)",
        rate(s),
        rate(n),
        n.as_secs_f64() / s.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
