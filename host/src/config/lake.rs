//! `[database.ducklake]`: the lake of the `ducklake` backend.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::HumanDuration;

/// Where the data lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One DuckDB file (`database.path`): the embedded default.
    #[default]
    File,
    /// A DuckLake: catalog in PostgreSQL, Parquet on S3-compatible storage (`[database.ducklake]`).
    Ducklake,
}

/// `[database.ducklake]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// The PostgreSQL catalog's libpq connection string (`host=… port=… dbname=… user=…
    /// password=…`), as a secret: `"env:NAME"` or `"file:/path"`.
    pub catalog: String,
    /// Where the lake's Parquet files go: `s3://bucket/prefix/`.
    pub data_path: String,
    /// DuckDB's extension directory; default `$SLUICE_DUCKDB_EXTENSIONS`, else
    /// `lib/duckdb-extensions` beside the binary's directory (the release bundle's layout).
    pub extension_directory: Option<PathBuf>,
    /// Inserts of up to this many rows stay in the catalog rather than becoming a Parquet file
    /// each (DuckLake's data inlining).
    pub inline_rows: u64,
    /// `[database.ducklake.s3]`
    pub s3: S3Config,
    /// Where the other gateways reach this one's API when it is the writer (they forward ingest
    /// and export runs to it): `https://host:port`, or `http://` to a loopback address; or
    /// `env:NAME`/`file:/path` holding it (a per-pod value). Default: the address the API
    /// listener is bound to.
    pub advertise_url: Option<String>,
    /// PEM certificates to trust (besides the public roots) for the catalog's TLS and for other
    /// gateways' HTTPS when forwarding.
    pub ca_file: Option<PathBuf>,
    /// How long a forwarded request may take on the writer.
    pub forward_timeout: HumanDuration,
    /// How often the writer compacts the lake (flushes inlined rows to Parquet, merges small
    /// files, expires old snapshots and deletes the files no snapshot needs).
    pub maintenance_interval: HumanDuration,
    /// Snapshots (and the files only they use) are kept this long: a query may read the snapshot
    /// it started on for at least this long.
    pub snapshot_retention: HumanDuration,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            catalog: String::new(),
            data_path: String::new(),
            extension_directory: None,
            inline_rows: 1000,
            s3: S3Config::default(),
            advertise_url: None,
            ca_file: None,
            forward_timeout: HumanDuration(Duration::from_secs(30)),
            maintenance_interval: HumanDuration(Duration::from_secs(600)),
            snapshot_retention: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

/// `[database.ducklake.s3]`
pub type S3Config = crate::db::lake::S3Options;

impl LakeConfig {
    /// Refuses what cannot work or would be unsafe, naming the key.
    pub fn check(&self) -> Result<(), String> {
        let at = "database.ducklake";
        if !crate::secret::is_reference(&self.catalog) {
            return Err(format!(
                "{at}.catalog must be \"env:NAME\" or \"file:/path\" holding the catalog's connection string (it carries a password)"
            ));
        }
        if !self.data_path.starts_with("s3://") {
            return Err(format!("{at}.data_path must be an s3:// URL, not {:?}", self.data_path));
        }
        if !["vhost", "path"].contains(&self.s3.url_style.as_str()) {
            return Err(format!("{at}.s3.url_style must be \"vhost\" or \"path\", not {:?}", self.s3.url_style));
        }
        if !self.s3.use_ssl {
            let host = self.s3.endpoint.rsplit_once(':').map_or(self.s3.endpoint.as_str(), |(h, _)| h);
            let loopback = host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
            if !loopback {
                return Err(format!("{at}.s3.use_ssl = false is allowed only with a loopback endpoint, not {:?}", self.s3.endpoint));
            }
        }
        for (key, v) in [("key_id", &self.s3.key_id), ("secret", &self.s3.secret)] {
            if v.as_deref().is_some_and(|s| !crate::secret::is_reference(s)) {
                return Err(format!("{at}.s3.{key} must be \"env:NAME\" or \"file:/path\""));
            }
        }
        if self.s3.key_id.is_some() != self.s3.secret.is_some() {
            return Err(format!("{at}.s3: give both key_id and secret, or neither"));
        }
        if let Some(url) = self.advertise_url.as_ref().filter(|u| !crate::secret::is_reference(u)) {
            crate::lake::check_peer_url(url).map_err(|e| format!("{at}.advertise_url: {e}"))?;
        }
        if self.snapshot_retention.0 < Duration::from_secs(60) {
            return Err(format!("{at}.snapshot_retention must be at least 60s (a query may read its snapshot that long)"));
        }
        if self.maintenance_interval.0 < Duration::from_secs(1) {
            return Err(format!("{at}.maintenance_interval must be at least 1s"));
        }
        Ok(())
    }

    /// The options the database opens the lake with.
    pub fn to_options(&self) -> crate::db::lake::LakeOptions {
        let extension_directory = self.extension_directory.clone().unwrap_or_else(default_extension_directory);
        crate::db::lake::LakeOptions {
            catalog: self.catalog.clone(),
            data_path: self.data_path.clone(),
            extension_directory,
            inline_rows: self.inline_rows,
            s3: self.s3.clone(),
        }
    }
}

impl LakeConfig {
    /// The options the writer election and forwarding run with.
    pub fn coordination(&self) -> crate::lake::Options {
        crate::lake::Options {
            catalog: self.catalog.clone(),
            data_path: self.data_path.clone(),
            advertise_url: self.advertise_url.clone(),
            ca_file: self.ca_file.clone(),
            forward_timeout: self.forward_timeout.0,
            maintenance_interval: self.maintenance_interval.0,
            snapshot_retention: self.snapshot_retention.0,
        }
    }
}

/// `$SLUICE_DUCKDB_EXTENSIONS`, else `<binary dir>/../lib/duckdb-extensions`.
fn default_extension_directory() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_DUCKDB_EXTENSIONS") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().and_then(|d| d.parent()).unwrap_or(std::path::Path::new(".")).join("lib/duckdb-extensions")
}
