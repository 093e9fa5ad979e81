//! `[database.ducklake]`: the lake of the `ducklake` backend.

use std::path::PathBuf;

use serde::Deserialize;

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
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self { catalog: String::new(), data_path: String::new(), extension_directory: None, inline_rows: 1000, s3: S3Config::default() }
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

/// `$SLUICE_DUCKDB_EXTENSIONS`, else `<binary dir>/../lib/duckdb-extensions`.
fn default_extension_directory() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_DUCKDB_EXTENSIONS") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().and_then(|d| d.parent()).unwrap_or(std::path::Path::new(".")).join("lib/duckdb-extensions")
}
