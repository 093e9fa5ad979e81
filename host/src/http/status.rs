//! `/status`: one page for operators, rendered on the server and refreshing itself (a meta
//! refresh; no JavaScript): the tools with their versions, digests and recent calls, the plugin
//! files that failed, the sinks with their connection test, each export with every sink's
//! condition, and whether this replica is draining. It shows no secrets: no settings, tokens or
//! error texts of tool backends.
//!
//! It takes a bearer like the API (`Authorization: Bearer`), or a browser session: the page
//! asks for the bearer once (`POST /status/session`), and a cookie (HttpOnly, SameSite=Strict,
//! `Path=/status`, Secure over TLS) stands for it for 12 hours. Only admin bearers see it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AppState;
use crate::audit::AuditEvent;
use crate::auth::Identity;

/// How long a browser session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const COOKIE: &str = "sluice_status";
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 1_000;

/// Browser sessions of the status page: a random id → the bearer's identity, until it expires.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, (Arc<Identity>, Instant)>>);

impl Sessions {
    fn open(&self, identity: Arc<Identity>) -> String {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).expect("the system's random source");
        let id = hex::encode(bytes);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, expires)| *expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), (identity, now + SESSION_TTL));
        id
    }

    fn get(&self, id: &str) -> Option<Arc<Identity>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|(_, expires)| *expires > Instant::now()).map(|(i, _)| i.clone())
    }
}

/// The bearer of `Authorization`, or the identity of the session cookie.
fn caller(state: &AppState, req: &Request) -> Option<Arc<Identity>> {
    let headers = req.headers();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
    {
        return state.auth.authenticate(token).ok();
    }
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let id = cookies.flat_map(|c| c.split(';')).find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_owned))?;
    state.status_sessions.get(&id)
}

/// `GET /status`: the page for an admin bearer or session; the sign-in form otherwise (200: for
/// a browser it is a page like any other, not a failed load).
pub async fn page(State(state): State<AppState>, req: Request) -> Response {
    match caller(&state, &req) {
        Some(identity) if identity.is_admin() => html(StatusCode::OK, &render(&state), true),
        Some(_) => html(StatusCode::FORBIDDEN, &sign_in("This bearer may not see the status page: it needs the admin permission."), false),
        None => html(StatusCode::OK, &sign_in(""), false),
    }
}

/// `POST /status/session` (form field `token`): opens a browser session for an admin bearer.
pub async fn open_session(State(state): State<AppState>, req: Request) -> Response {
    let ip = super::front_door::source_ip(&req);
    let body = axum::body::to_bytes(req.into_body(), 16 << 10).await.unwrap_or_default();
    let token = url::form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.trim().to_owned()).unwrap_or_default();
    let identity = state.auth.authenticate(&token).ok().filter(|i| i.is_admin());
    let ev = AuditEvent { source_ip: ip, bearer_hash: Some(crate::auth::token_hash(&token)), ..AuditEvent::new("status_session") };
    let Some(identity) = identity else {
        state.audit.record(ev.with("result", "refused"));
        return html(StatusCode::UNAUTHORIZED, &sign_in("That bearer was not accepted (unknown, expired, or without the admin permission)."), false);
    };
    state.audit.record(AuditEvent { bearer_key_name: Some(identity.key_name.clone()), ..ev }.with("result", "opened"));
    let id = state.status_sessions.open(identity);
    let secure = if state.tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={id}; Path=/status; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION_TTL.as_secs());
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/status")]).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is header-safe"));
    resp
}

fn html(status: StatusCode, body: &str, refresh: bool) -> Response {
    let refresh = if refresh { "<meta http-equiv=\"refresh\" content=\"10\">" } else { "" };
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<link rel=\"icon\" href=\"data:,\"><title>Sluice status</title>\
         <style>{STYLE}</style></head><body>{body}</body></html>"
    );
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        // Nothing but this page's own inline style; no scripts at all.
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'"),
    ];
    (status, headers, page).into_response()
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}\
h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse;margin:.4em 0}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}\
.Exported,.ok,.closed{color:#14692b}.Debounced,.Pending,.half_open{color:#7a5b00}\
.ExportFailed,.failed,.open,.draining{color:#a11;font-weight:600}code{font-size:.95em}";

fn sign_in(message: &str) -> String {
    format!(
        "<h1>Sluice status</h1><p>{}</p><form method=\"post\" action=\"/status/session\">\
         <label>Bearer token <input type=\"password\" name=\"token\" autocomplete=\"off\" required></label> \
         <button type=\"submit\">Sign in</button></form><p>The token is sent once; a cookie stands for it for 12 hours.</p>",
        esc(if message.is_empty() { "Sign in with an admin bearer." } else { message })
    )
}

/// `&`, `<`, `>`, `"` and `'` escaped for HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

fn render(state: &AppState) -> String {
    let mut h = String::new();
    let drain = if state.drain.is_draining() { "<span class=\"draining\">draining</span>" } else { "serving" };
    let _ = write!(h, "<h1>Sluice {}</h1><p>This replica: {drain}. Refreshes every 10 s.</p>", env!("CARGO_PKG_VERSION"));
    render_tools(state, &mut h);
    render_sinks(state, &mut h);
    render_exports(state, &mut h);
    h
}

fn render_tools(state: &AppState, h: &mut String) {
    let registry = state.runtime.registry();
    let _ = write!(
        h,
        "<h2>Tools</h2><table><tr><th>tool</th><th>version</th><th>digest</th><th>loaded</th>\
         <th>calls, last {} min</th><th>failed</th><th>last failure</th></tr>",
        crate::metrics::RECENT_MINUTES
    );
    for t in registry.tools() {
        let (calls, failed) = t.recent_calls();
        let loaded = humantime::format_rfc3339_seconds(t.loaded_at);
        let class = if failed > 0 { " class=\"failed\"" } else { "" };
        let last = t.last_failure().map_or_else(|| "—".to_owned(), |(at, how)| format!("{} ({})", esc(&how), esc(&at)));
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{loaded}</td><td>{calls}</td><td{class}>{failed}</td><td>{last}</td></tr>",
            esc(&t.name),
            esc(&t.version),
            esc(&t.digest[..16.min(t.digest.len())])
        );
    }
    h.push_str("</table>");
    let canaries: Vec<_> = registry.canaries().map(|c| (c.stable.name.clone(), c.stable.version.clone(), c.status())).collect();
    if !canaries.is_empty() {
        h.push_str(
            "<h2>Rollouts</h2><table><tr><th>tool</th><th>serving</th><th>canary</th><th>state</th><th>share</th>\
             <th>canary calls</th><th>failed</th><th>serving calls</th></tr>",
        );
        for (name, serving, c) in canaries {
            let class = if c.canary_failures > 0 { " class=\"failed\"" } else { "" };
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{class}>{}</td><td>{}</td></tr>",
                esc(&name),
                esc(&serving),
                esc(&c.canary_version),
                c.state,
                c.share,
                c.canary_calls,
                c.canary_failures,
                c.stable_calls
            );
        }
        h.push_str("</table>");
    }
    let failed: Vec<_> = registry.statuses().into_iter().filter(|s| s.last_error.is_some()).collect();
    if !failed.is_empty() {
        h.push_str("<h2>Plugin files refused</h2><table><tr><th>file</th><th>error</th></tr>");
        for f in failed {
            let _ = write!(h, "<tr><td><code>{}</code></td><td class=\"failed\">{}</td></tr>", esc(&f.file), esc(f.last_error.as_deref().unwrap_or("")));
        }
        h.push_str("</table>");
    }
}

fn render_sinks(state: &AppState, h: &mut String) {
    h.push_str("<h2>Sinks</h2><table><tr><th>sink</th><th>type</th><th>version</th><th>breaker</th><th>connection test</th></tr>");
    for s in state.exports.sinks() {
        let loaded = s.loaded();
        let test = match s.connection() {
            Some(c) if c.verified => format!("<span class=\"ok\">verified</span> {} ms, {}", c.latency_ms, esc(&c.at)),
            Some(c) => format!("<span class=\"failed\">failed</span>: {} ({})", esc(&c.detail), esc(&c.at)),
            None => "not run".into(),
        };
        let breaker = s.breaker_state();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{breaker}\">{breaker}</td><td>{test}</td></tr>",
            esc(&s.entry.name),
            esc(&loaded.info.sink_type),
            esc(&loaded.info.version)
        );
    }
    h.push_str("</table>");
}

fn render_exports(state: &AppState, h: &mut String) {
    h.push_str("<h2>Exports</h2>");
    for status in state.exports.statuses() {
        let v = serde_json::to_value(&status).unwrap_or_default();
        let _ = write!(
            h,
            "<h3>{}</h3><p>Condition: <span class=\"{c}\">{c}</span>; last run {}; generation {}; {} items.</p>",
            text(&v["name"]),
            text(&v["lastRun"]),
            text(&v["generation"]),
            text(&v["itemCount"]),
            c = text(&v["condition"])
        );
        for w in v["warnings"].as_array().into_iter().flatten() {
            let _ = write!(h, "<p class=\"Debounced\">Warning: {}</p>", text(w));
        }
        h.push_str("<table><tr><th>sink</th><th>condition</th><th>last export</th><th>breaker</th><th>last error</th></tr>");
        for line in v["sinkExports"].as_array().into_iter().flatten() {
            let synced = text(&line["synced"]);
            let error = match &line["lastError"] {
                Value::Null => "—".to_owned(),
                e => format!("{}: {}", text(&e["class"]), text(&e["message"])),
            };
            let breaker = text(&line["breaker"]);
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{synced}\">{synced}</td><td>{}</td><td class=\"{breaker}\">{breaker}</td><td>{error}</td></tr>",
                text(&line["sink"]),
                text(&line["lastExportTime"])
            );
        }
        h.push_str("</table>");
    }
}
