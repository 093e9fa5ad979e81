//! A sink's outbound network policy: what its configuration allows, checked by the host.
//!
//! `wasi:http` requests go only to the hosts of the sink's settings (checked before anything is
//! sent, and every address the name resolves to must be allowed; TLS is the host's);
//! `wasi:sockets` connections only to allowed addresses (the hosts of the settings, or what their
//! names resolved to for this call). Link-local and cloud-metadata addresses are always refused;
//! loopback and private ones only when the sink's configuration allows them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::WasiHttpHooks;

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
    pub(super) fn socket_allowed(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
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
pub(super) struct PolicyHooks(pub(super) Arc<NetPolicy>);

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
}
