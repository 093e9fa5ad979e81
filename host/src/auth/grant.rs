//! What a bearer may do besides seeing its clusters: which tools it may call, and whether it may
//! use the admin routes (plugins, exports, sinks, SQL).
//!
//! Static bearers say it in the ACL (`allowed_tools`, `admin`); JWT bearers in their scopes
//! (`sluice:tools:<pattern>`, `sluice:admin`). An ACL entry that says neither keeps the meaning it
//! had before these existed: every tool, and the admin routes when it is not cluster-scoped.

/// A bearer's permissions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// Tool name patterns this bearer may call (`*` matches any run of characters); `None`: all.
    pub tools: Option<Vec<String>>,
    /// The admin routes. Only honoured for a bearer that sees every cluster (see
    /// [`super::Identity::is_admin`]): SQL and exports read across clusters.
    pub admin: bool,
}

impl Grants {
    /// Everything: every tool and the admin routes.
    pub fn all() -> Self {
        Self { tools: None, admin: true }
    }

    /// Whether the bearer may call `tool`.
    pub fn may_call(&self, tool: &str) -> bool {
        self.tools.as_ref().is_none_or(|patterns| patterns.iter().any(|p| glob(p, tool)))
    }
}

/// The scope a caller lacks for `tool`, as RFC 6750's `insufficient_scope` names it.
pub fn tool_scope(tool: &str) -> String {
    format!("{TOOL_SCOPE_PREFIX}{tool}")
}

/// The scope that grants the admin routes.
pub const ADMIN_SCOPE: &str = "sluice:admin";
/// `sluice:tools:<pattern>` grants the tools matching the pattern.
pub const TOOL_SCOPE_PREFIX: &str = "sluice:tools:";
/// `sluice:clusters:*` grants every cluster; `sluice:clusters:<id>` one cluster.
pub const CLUSTER_SCOPE_PREFIX: &str = "sluice:clusters:";

/// Checks a tool pattern: a tool name in which `*` may stand for any run of characters.
pub fn check_pattern(p: &str) -> Result<(), String> {
    let ok = !p.is_empty() && p.len() <= 128 && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.*".contains(&b));
    if ok { Ok(()) } else { Err(format!("{p:?} is not a tool pattern (lowercase letters, digits, '_', '.', and '*' for any run)")) }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (none included).
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Iterative matching with one backtrack point: linear in practice, no recursion.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_as_globs() {
        for (p, n, want) in [
            ("fleet.cluster.*", "fleet.cluster.summary", true),
            ("fleet.cluster.*", "fleet.clusters", false),
            ("fleet.cluster.summary", "fleet.cluster.summary", true),
            ("fleet.cluster.summary", "fleet.cluster.summary2", false),
            ("*", "anything.at_all", true),
            ("*.summary", "fleet.cluster.summary", true),
            ("fleet.*.find_*", "fleet.cluster.find_stragglers", true),
            ("fleet.*.find_*", "fleet.cluster.summary", false),
            ("", "x", false),
        ] {
            assert_eq!(glob(p, n), want, "{p} ~ {n}");
        }
        let g = Grants { tools: Some(vec!["fleet.cluster.find_*".into(), "test.trivial".into()]), admin: false };
        assert!(g.may_call("fleet.cluster.find_stragglers") && g.may_call("test.trivial"));
        assert!(!g.may_call("fleet.cluster.summary"));
        assert!(Grants::all().may_call("x.y") && Grants::default().may_call("x.y"));
        assert!(check_pattern("fleet.cluster.*").is_ok() && check_pattern("Fleet").is_err() && check_pattern("").is_err());
    }
}
