//! Who is calling: the request's id, the bearer's identity, and where from. The front door makes
//! one for every authenticated HTTP request; `sluice call` makes a local one. The application
//! layer (`calls`) and the audit log take it whatever the transport.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;

use crate::audit::AuditEvent;
use crate::auth::Identity;

/// The request's id: 16 lowercase hex characters, also in every log and audit line about it.
///
/// Ids never repeat within a process (a counter run through a keyed bijection) and are not
/// guessable across processes (the key is random). Each thread takes counter values in blocks,
/// so generating one touches no memory shared with other threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

impl RequestId {
    /// A fresh id.
    pub fn generate() -> Self {
        const BLOCK: u64 = 1 << 16;
        static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
        static KEY: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
        thread_local! {
            static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let n = RANGE.with(|r| {
            let (mut next, mut end) = r.get();
            if next == end {
                next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
                end = next + BLOCK;
            }
            r.set((next + 1, end));
            next
        });
        let (k1, k2) = *KEY.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let s = std::collections::hash_map::RandomState::new();
            let mut a = s.build_hasher();
            a.write_u8(1);
            let mut b = s.build_hasher();
            b.write_u8(2);
            (a.finish(), b.finish())
        });
        // xor, odd multiplications and xor-shifts are each invertible, so distinct counters
        // give distinct ids.
        let mut x = n ^ k1;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        Self(x.wrapping_add(k2))
    }

    fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }

    /// The id as a number: uniformly spread, so it also decides which requests are traced.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id as a header value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_bytes(&self.hex()).expect("hex is a valid header value")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).expect("hex is ASCII"))
    }
}

/// The authenticated caller of a request, for handlers and audit lines.
#[derive(Debug, Clone)]
pub struct Caller {
    pub req_id: RequestId,
    pub identity: Arc<Identity>,
    pub source_ip: Option<IpAddr>,
    /// The request's trace, when it is traced or its caller sent a trace context.
    pub trace: Option<crate::telemetry::Trace>,
}

impl Caller {
    /// An audit event pre-filled with who, from where and which request.
    pub fn audit(&self, event: &'static str) -> AuditEvent {
        let ev = AuditEvent {
            req_id: Some(self.req_id.to_string()),
            bearer_hash: Some(self.identity.bearer_hash.clone()),
            bearer_key_name: Some(self.identity.key_name.clone()),
            source_ip: self.source_ip,
            ..AuditEvent::new(event)
        };
        let ev = match &self.trace {
            Some(t) => ev.with("trace_id", t.trace_id_hex()),
            None => ev,
        };
        match &self.identity.token {
            // A JWT caller: who issued it, to whom, and the token's id (never the token).
            Some(t) => {
                let ev = ev.with("issuer", t.issuer.clone()).with("subject", t.subject.clone());
                match &t.jti {
                    Some(jti) => ev.with("jti", jti.clone()),
                    None => ev,
                }
            }
            None => ev,
        }
    }
}

impl Caller {
    /// The operator at the local command line (`sluice call`): unscoped, named `local`.
    pub fn local() -> Self {
        let identity = Identity::static_bearer("0".repeat(64), "local".into(), vec![], crate::auth::Grants::all());
        Self { req_id: RequestId::generate(), identity: Arc::new(identity), source_ip: None, trace: None }
    }
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn request_ids_are_16_hex_and_distinct_across_threads() {
        let per_thread: Vec<Vec<RequestId>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..70_000).map(|_| RequestId::generate()).collect())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<RequestId> = per_thread.into_iter().flatten().collect();
        let n = all.len();
        for id in &all[..100] {
            let s = id.to_string();
            assert_eq!(s.len(), 16);
            assert!(s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{s}");
            assert_eq!(id.header_value().to_str().unwrap(), s);
        }
        all.sort_unstable_by_key(|id| id.0);
        all.dedup();
        assert_eq!(all.len(), n, "request ids repeated");
    }
}
