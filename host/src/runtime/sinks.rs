//! The `sink` world on the host side: bindings, the per-call state with its network policy, and
//! loading and calling a sink component.
//!
//! A sink's network is what its configuration allows: `wasi:http` requests only to the hosts of
//! its settings (checked in the host before anything is sent; TLS is the host's), `wasi:sockets`
//! connections only to allowed addresses. Link-local and cloud-metadata addresses are always
//! refused; loopback and private ones only when the sink's configuration allows them.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::Runtime;
use super::tools::bindings::sluice::plugin::log;
use super::tools::plugin_log;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sink",
        imports: { default: async },
        exports: { default: async },
        with: { "sluice:plugin/log": crate::runtime::tools::bindings::sluice::plugin::log },
    });
}

pub use bindings::sluice::plugin::sink_types::{
    Capabilities, ErrorClass, ExportRequest, Family, Receipt, SinkConfig, SinkError, SinkInfo,
};
pub use bindings::{Sink, SinkPre};

/// How long `describe` may take when a sink is loaded.
pub const DESCRIBE_DEADLINE: Duration = Duration::from_secs(5);

/// Where a sink may connect.
#[derive(Debug, Clone, Default)]
pub struct NetPolicy {
    /// Hosts (lowercase) and, when given, their port.
    hosts: Vec<(String, Option<u16>)>,
    /// Loopback and private addresses are allowed (development, in-cluster services).
    allow_private: bool,
    /// The addresses the host names among `hosts` resolved to for this call (see
    /// [`NetPolicy::resolved`]): what a TCP sink may connect to when its settings name a host.
    addresses: Vec<(IpAddr, Option<u16>)>,
}

impl NetPolicy {
    /// A policy allowing the hosts of these URLs (or `host:port` strings).
    pub fn for_urls<'a>(urls: impl IntoIterator<Item = &'a str>, allow_private: bool) -> Self {
        let hosts = urls
            .into_iter()
            .flat_map(|u| u.split([',', ' ']).filter(|s| !s.is_empty()))
            .filter_map(|u| {
                let authority = u.split_once("://").map_or(u, |(_, rest)| rest);
                let authority = authority.split(['/', '?', '#']).next()?.rsplit('@').next()?;
                let uri: axum::http::uri::Authority = authority.parse().ok()?;
                Some((uri.host().trim_matches(['[', ']']).to_ascii_lowercase(), uri.port_u16()))
            })
            .collect();
        Self { hosts, allow_private, addresses: Vec::new() }
    }

    /// Whether any allowed host is a name rather than an address (a TCP sink then resolves it
    /// through `wasi:sockets`).
    pub fn names_hosts(&self) -> bool {
        self.hosts.iter().any(|(h, _)| h.parse::<IpAddr>().is_err())
    }

    /// This policy with its host names resolved now, for one call: a TCP connection is allowed
    /// to an address of an allowed name (and that address must itself be allowed).
    pub async fn resolved(self: &Arc<Self>) -> Arc<Self> {
        if !self.names_hosts() {
            return self.clone();
        }
        let mut addresses = Vec::new();
        for (host, port) in self.hosts.iter().filter(|(h, _)| h.parse::<IpAddr>().is_err()) {
            if let Ok(found) = tokio::net::lookup_host((host.as_str(), port.unwrap_or(0))).await {
                addresses.extend(found.map(|a| (a.ip(), *port)));
            }
        }
        Arc::new(Self { addresses, ..(**self).clone() })
    }

    /// Whether requests to this host (and port) are allowed.
    pub fn host_allowed(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.hosts.iter().any(|(h, p)| *h == host && (p.is_none() || *p == port))
    }

    /// Whether connecting to this address is allowed: never link-local, metadata, unspecified,
    /// multicast or broadcast; loopback and private only with `allow_private`.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                if v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
                    return false;
                }
                // 100.100.100.200 (Alibaba) and 192.0.0.192 (Oracle) metadata services.
                if v4.octets() == [100, 100, 100, 200] || v4.octets() == [192, 0, 0, 192] {
                    return false;
                }
                let private = v4.is_loopback() || v4.is_private() || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
                !private || self.allow_private
            }
            IpAddr::V6(v6) => {
                let seg = v6.segments();
                let link_local = (seg[0] & 0xffc0) == 0xfe80;
                // fd00:ec2::254 (AWS metadata over IPv6).
                let metadata = seg == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254];
                if link_local || metadata || v6.is_unspecified() || v6.is_multicast() {
                    return false;
                }
                let private = v6.is_loopback() || (seg[0] & 0xfe00) == 0xfc00;
                !private || self.allow_private
            }
        }
    }

    /// Whether a socket use is allowed: connections to allowed addresses whose host is in the
    /// policy, and the ephemeral bind every connect starts with.
    fn socket_allowed(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        match usage {
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => {
                let port = Some(addr.port());
                self.ip_allowed(addr.ip())
                    && (self.host_allowed(&addr.ip().to_string(), port)
                        || self.addresses.iter().any(|(ip, p)| *ip == addr.ip() && (p.is_none() || *p == port)))
            }
            _ => false,
        }
    }
}

/// `wasi:http` hooks: every outgoing request is checked against the sink's policy before the
/// host sends it.
struct PolicyHooks(Arc<NetPolicy>);

impl WasiHttpHooks for PolicyHooks {
    fn send_request(
        &mut self,
        request: axum::http::Request<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        axum::http::Response<wasmtime_wasi_http::p2::body::HyperIncomingBody>,
                        Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let policy = self.0.clone();
        Box::new(async move {
            // A refused request still takes the body the guest is writing, so the guest sees the
            // refusal (`HTTP-request-denied`) rather than a broken stream.
            async fn refuse(
                request: axum::http::Request<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
            ) -> wasmtime_wasi_http::Error {
                use http_body_util::BodyExt as _;
                let _ = request.into_body().collect().await;
                wasmtime_wasi_http::Error::HttpRequestDenied
            }
            let uri = request.uri().clone();
            let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
            let Some(host) = uri.host().map(str::to_owned).filter(|_| scheme_ok) else {
                return Err(refuse(request).await);
            };
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            if !policy.host_allowed(&host, uri.port_u16()) && !policy.host_allowed(&host, Some(port)) {
                tracing::warn!(%host, "Sink request refused: the host is not in the sink's configuration.");
                return Err(refuse(request).await);
            }
            // Every address the name resolves to must be allowed (no metadata, no private
            // address unless allowed).
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .map_err(|_| wasmtime_wasi_http::Error::DnsError { rcode: None, info_code: None })?
                .collect();
            if addrs.is_empty() || !addrs.iter().all(|a| policy.ip_allowed(a.ip())) {
                tracing::warn!(%host, ?addrs, "Sink request refused: the host resolves to a refused address.");
                return Err(refuse(request).await);
            }
            let hooks: &mut dyn WasiHttpHooks = wasmtime_wasi_http::default_hooks();
            Box::into_pin(hooks.send_request(request, options, fut)).await
        })
    }
}

/// One sink call's store state.
pub struct SinkState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: PolicyHooks,
    table: ResourceTable,
    limits: StoreLimits,
    name: Arc<str>,
}

impl SinkState {
    pub fn new(name: &str, policy: Arc<NetPolicy>, memory_limit: usize) -> Self {
        let sockets = policy.clone();
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(true)
            .allow_udp(false)
            // Only a sink whose settings name a host may resolve names (it connects to nothing
            // but their addresses either way).
            .allow_ip_name_lookup(policy.names_hosts())
            .socket_addr_check(move |addr, usage| {
                let ok = sockets.socket_allowed(addr, usage);
                Box::pin(async move { ok })
            })
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            hooks: PolicyHooks(policy),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(memory_limit).trap_on_grow_failure(true).build(),
            name: Arc::from(name),
        }
    }
}

impl WasiView for SinkState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for SinkState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl bindings::sluice::plugin::sink_types::Host for SinkState {}

impl log::Host for SinkState {
    async fn log(&mut self, level: log::Level, message: String) {
        plugin_log(&self.name, "", level, message);
    }
}

/// The linker every sink is instantiated with.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<SinkState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Sink::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// A loaded sink component.
pub struct LoadedSink {
    pub info: SinkInfo,
    pub digest: String,
    pre: SinkPre<SinkState>,
}

impl std::fmt::Debug for LoadedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSink").field("type", &self.info.sink_type).field("digest", &self.digest).finish_non_exhaustive()
    }
}

/// How a sink call failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkCallError {
    /// The component's own classified error.
    #[error("{}: {}", class_name(.0.class), .0.message)]
    Sink(SinkError),
    /// The call ran past its deadline (transient).
    #[error("sink ran past its deadline of {0:?}")]
    Timeout(Duration),
    /// The component trapped (transient: a fresh instance may succeed).
    #[error("sink failed: {0}")]
    Trap(String),
}

/// `transient`, `terminal`, `forbidden`.
pub fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Transient => "transient",
        ErrorClass::Terminal => "terminal",
        ErrorClass::Forbidden => "forbidden",
    }
}

impl SinkCallError {
    /// The error class the engine acts on (timeouts and traps are transient).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Sink(e) => e.class,
            Self::Timeout(_) | Self::Trap(_) => ErrorClass::Transient,
        }
    }
}

/// Whether a sink type name is valid: `^[a-z][a-z0-9_-]{0,63}$`.
pub fn is_valid_sink_type(t: &str) -> bool {
    let b = t.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

impl Runtime {
    fn sink_linker(&self) -> anyhow::Result<&Linker<SinkState>> {
        if let Some(l) = self.sink_linker.get() {
            return Ok(l);
        }
        let l = linker(self.engine.engine())?;
        Ok(self.sink_linker.get_or_init(|| l))
    }

    fn sink_store(&self, state: SinkState, deadline: Instant) -> Store<SinkState> {
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Trap::Interrupt.into())
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Loads a sink component: compiles it (through the artifact cache), links it and asks it
    /// what it is.
    pub fn load_sink(&self, path: &Path) -> anyhow::Result<Arc<LoadedSink>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let engine = self.engine.engine();
        let (component, _) = self.cache.load(engine, &digest, &bytes).context("not a valid WebAssembly component")?;
        let pre = self
            .sink_linker()?
            .instantiate_pre(&component)
            .map_err(|e| anyhow::Error::from(e).context("the component imports something the `sink` world does not provide"))?;
        let pre = SinkPre::new(pre)
            .map_err(|e| anyhow::Error::from(e).context("the component does not export the `sink` world (describe, probe, export)"))?;
        let deadline = Instant::now() + DESCRIBE_DEADLINE;
        let mut store = self.sink_store(SinkState::new("describe", Arc::default(), self.config.memory_limit.0), deadline);
        let info = super::block_on(async {
            let s = pre.instantiate_async(&mut store).await?;
            s.call_describe(&mut store).await
        })
        .map_err(|e| anyhow::anyhow!("describe failed: {e:?}"))?;
        anyhow::ensure!(
            is_valid_sink_type(&info.sink_type),
            "describe returned an invalid sink type {:?}: types match ^[a-z][a-z0-9_-]{{0,63}}$",
            info.sink_type
        );
        Ok(Arc::new(LoadedSink { info, digest, pre }))
    }

    async fn sink_call(
        &self,
        sink: &LoadedSink,
        config: &SinkConfig,
        op: Op<'_>,
        policy: Arc<NetPolicy>,
        timeout: Duration,
    ) -> Result<Answer, SinkCallError> {
        let deadline = Instant::now() + timeout;
        let policy = policy.resolved().await;
        let mut store = self.sink_store(SinkState::new(&config.name, policy, self.config.memory_limit.0), deadline);
        let run = async {
            let s = sink.pre.instantiate_async(&mut store).await?;
            Ok::<_, wasmtime::Error>(match op {
                Op::Probe => s.call_probe(&mut store, config).await?.map(Answer::Probed),
                Op::Export(r) => s.call_export(&mut store, config, r).await?.map(Answer::Delivered),
            })
        };
        let result = tokio::time::timeout_at((deadline + 2 * super::engine::EPOCH_TICK).into(), run).await;
        match result {
            Err(_) => Err(SinkCallError::Timeout(timeout)),
            Ok(Err(e)) => Err(match super::tools::classify(e, timeout, &AtomicBool::new(false)) {
                super::CallError::Timeout(d) => SinkCallError::Timeout(d),
                other => SinkCallError::Trap(other.to_string()),
            }),
            Ok(Ok(r)) => r.map_err(SinkCallError::Sink),
        }
    }

    /// Runs a sink's connection test.
    pub async fn sink_probe(
        &self,
        sink: &LoadedSink,
        config: &SinkConfig,
        policy: Arc<NetPolicy>,
        timeout: Duration,
    ) -> Result<String, SinkCallError> {
        match self.sink_call(sink, config, Op::Probe, policy, timeout).await? {
            Answer::Probed(detail) => Ok(detail),
            Answer::Delivered(_) => unreachable!("a probe answers a probe"),
        }
    }

    /// Delivers one export or part.
    pub async fn sink_export(
        &self,
        sink: &LoadedSink,
        config: &SinkConfig,
        request: &ExportRequest,
        policy: Arc<NetPolicy>,
        timeout: Duration,
    ) -> Result<Receipt, SinkCallError> {
        match self.sink_call(sink, config, Op::Export(request), policy, timeout).await? {
            Answer::Delivered(receipt) => Ok(receipt),
            Answer::Probed(_) => unreachable!("an export answers an export"),
        }
    }
}

/// A call to make.
enum Op<'a> {
    Probe,
    Export(&'a ExportRequest),
}

/// Its answer.
enum Answer {
    Probed(String),
    Delivered(Receipt),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_refuses_metadata_and_link_local_always_and_private_unless_allowed() {
        let strict = NetPolicy::for_urls(["https://s3.example.com/bucket", "http://hooks.example:8080/x"], false);
        let open = NetPolicy::for_urls(["http://127.0.0.1:9000"], true);
        for ip in ["169.254.169.254", "169.254.1.1", "0.0.0.0", "224.0.0.1", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254", "100.100.100.200"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!strict.ip_allowed(ip) && !open.ip_allowed(ip), "{ip}");
        }
        for ip in ["127.0.0.1", "10.1.2.3", "192.168.1.1", "172.20.0.1", "::1", "fd12::1", "100.64.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!strict.ip_allowed(ip), "{ip} needs allow_private");
            assert!(open.ip_allowed(ip), "{ip}");
        }
        assert!(strict.ip_allowed("93.184.216.34".parse().unwrap()));
        assert!(strict.host_allowed("S3.example.com", Some(443)));
        assert!(strict.host_allowed("hooks.example", Some(8080)));
        assert!(!strict.host_allowed("hooks.example", Some(8081)));
        assert!(!strict.host_allowed("evil.example", None));
        assert!(open.socket_allowed("127.0.0.1:9000".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(!open.socket_allowed("127.0.0.1:9001".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(open.socket_allowed("0.0.0.0:0".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!open.socket_allowed("0.0.0.0:80".parse().unwrap(), SocketAddrUse::TcpBind));
        // Lists of brokers, and URLs with a user.
        let brokers = NetPolicy::for_urls(["127.0.0.1:9092, 127.0.0.2:9093", "postgres://u@127.0.0.3:5432/db"], true);
        for ok in ["127.0.0.1:9092", "127.0.0.2:9093", "127.0.0.3:5432"] {
            assert!(brokers.socket_allowed(ok.parse().unwrap(), SocketAddrUse::TcpConnect), "{ok}");
        }
        assert!(!brokers.socket_allowed("127.0.0.1:5432".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(!brokers.names_hosts());
    }

    #[tokio::test]
    async fn named_hosts_allow_their_addresses_for_one_call() {
        let policy = Arc::new(NetPolicy::for_urls(["postgres://sluice@localhost:5432/db"], true));
        assert!(policy.names_hosts());
        assert!(!policy.socket_allowed("127.0.0.1:5432".parse().unwrap(), SocketAddrUse::TcpConnect));
        let resolved = policy.resolved().await;
        assert!(resolved.socket_allowed("127.0.0.1:5432".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(!resolved.socket_allowed("127.0.0.1:5433".parse().unwrap(), SocketAddrUse::TcpConnect));
        // Resolving never lifts the address rules.
        let strict = Arc::new(NetPolicy::for_urls(["postgres://sluice@localhost:5432/db"], false)).resolved().await;
        assert!(!strict.socket_allowed("127.0.0.1:5432".parse().unwrap(), SocketAddrUse::TcpConnect));
    }

    #[test]
    fn sink_type_names() {
        for ok in ["git", "s3", "http", "my-sink_2"] {
            assert!(is_valid_sink_type(ok), "{ok}");
        }
        for bad in ["", "Git", "1s3", "a b", &"x".repeat(65)] {
            assert!(!is_valid_sink_type(bad), "{bad}");
        }
    }
}
