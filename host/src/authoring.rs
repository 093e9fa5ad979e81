//! The plugin author's commands: `sluice plugin new | build | inspect | call`.
//!
//! A scaffolded tool is a crate of its own made from `examples/tool-template` (embedded in the
//! binary), depending on the guest helper crate `sluice-pdk` by path. Building is
//! `cargo build --release --target wasm32-wasip2`; the component is what rustc emits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::runtime::{ComponentShape, Runtime, is_valid_tool_name};

/// The tool template's files, as shipped in `examples/tool-template`.
const TOOL_CARGO_TOML: &str = include_str!("../../examples/tool-template/Cargo.toml");
const TOOL_LIB_RS: &str = include_str!("../../examples/tool-template/src/lib.rs");
const TOOL_README: &str = include_str!("../../examples/tool-template/README.md");
/// The lock file of the Sluice sources: a new crate starts with the dependency versions Sluice
/// was built and tested with (cargo drops the entries it does not need).
const WORKSPACE_LOCK: &str = include_str!("../../Cargo.lock");
/// What the template calls itself; replaced by the new tool's names.
const TEMPLATE_TOOL_NAME: &str = "example.events_by_metric";
const TEMPLATE_CRATE_NAME: &str = "sluice-tool-template";
const TEMPLATE_PDK_PATH: &str = "../../plugins/pdk";

/// The sink template's files, as shipped in `examples/sink-template` (whose `wit` links to the
/// project's WIT; a new sink crate gets a copy of it, the contract to read). Its bindings come
/// from the sink kit `sluice-sink-common`, a path dependency like `sluice-pdk` for tools.
const SINK_CARGO_TOML: &str = include_str!("../../examples/sink-template/Cargo.toml");
const SINK_LIB_RS: &str = include_str!("../../examples/sink-template/src/lib.rs");
const SINK_README: &str = include_str!("../../examples/sink-template/README.md");
const TEMPLATE_SINK_TYPE: &str = "example-hook";
const TEMPLATE_SINK_CRATE: &str = "sluice-sink-template";
const TEMPLATE_KIT_PATH: &str = "../../sinks-wasm/common";
/// The WIT package, for new sink crates.
const WIT_FILES: [(&str, &str); 4] = [
    ("log.wit", include_str!("../../wit/log.wit")),
    ("query.wit", include_str!("../../wit/query.wit")),
    ("sink.wit", include_str!("../../wit/sink.wit")),
    ("tool.wit", include_str!("../../wit/tool.wit")),
];

/// Creates a sink crate for sink type `name` in `dir` (default: `./<name>`), depending on the
/// sink kit at `kit`; returns the directory. The crate carries a copy of the WIT package.
pub fn new_sink(name: &str, dir: Option<&Path>, kit: &Path) -> anyhow::Result<PathBuf> {
    if !crate::runtime::sinks::is_valid_sink_type(name) {
        let mut suggestion: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' { c } else { '-' })
            .collect();
        if !suggestion.starts_with(|c: char| c.is_ascii_lowercase()) {
            suggestion.insert_str(0, "my-");
        }
        suggestion.truncate(64);
        if !crate::runtime::sinks::is_valid_sink_type(&suggestion) {
            suggestion = "acme-hook".into();
        }
        bail!(
            "invalid sink type {name:?}: sink types match ^[a-z][a-z0-9_-]{{0,63}}$ (lowercase letters, digits, '-' \
             and '_', starting with a letter), for example {suggestion:?}"
        );
    }
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_owned);
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty; choose another name or pass --dir", dir.display());
    }
    let kit = kit.canonicalize().with_context(|| {
        format!(
            "the sink kit sluice-sink-common is not at {}; pass --sink-kit <dir> (sinks-wasm/common in the Sluice \
             sources) or set SLUICE_SINK_KIT",
            kit.display()
        )
    })?;
    anyhow::ensure!(kit.join("Cargo.toml").is_file(), "{} has no Cargo.toml: it is not the sink kit", kit.display());
    let cargo_toml = SINK_CARGO_TOML
        .replacen(&format!("name = \"{TEMPLATE_SINK_CRATE}\""), &format!("name = \"{}\"", name.replace('_', "-")), 1)
        .replacen(&format!("path = \"{TEMPLATE_KIT_PATH}\""), &format!("path = {}", toml_string(&kit.to_string_lossy())), 1);
    let lib_rs = SINK_LIB_RS.replace(TEMPLATE_SINK_TYPE, name);
    let readme = SINK_README.replace(TEMPLATE_SINK_TYPE, name);
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("wit"))?;
    let mut files = vec![
        ("Cargo.toml".to_owned(), cargo_toml.as_str()),
        ("Cargo.lock".to_owned(), WORKSPACE_LOCK),
        ("src/lib.rs".to_owned(), lib_rs.as_str()),
        ("README.md".to_owned(), readme.as_str()),
        (".gitignore".to_owned(), "/target\n"),
    ];
    files.extend(WIT_FILES.iter().map(|(f, text)| (format!("wit/{f}"), *text)));
    for (file, text) in files {
        std::fs::write(dir.join(&file), text).with_context(|| format!("writing {}", dir.join(&file).display()))?;
    }
    Ok(dir)
}

/// The WebAssembly target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Where `sluice-pdk` is found when neither `--pdk` nor `SLUICE_PDK` says: next to the sources
/// this binary was built from.
pub fn default_pdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/pdk")
}

/// Where the sink kit is found when neither `--sink-kit` nor `SLUICE_SINK_KIT` says: next to
/// the sources this binary was built from.
pub fn default_sink_kit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sinks-wasm/common")
}

/// A valid tool name close to `name`, for error messages.
pub fn suggest_tool_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '.' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            '-' | ' ' | '/' | ':' => Some('_'),
            _ => None,
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert_str(0, "my.");
    }
    s.truncate(128);
    if is_valid_tool_name(&s) { s } else { "acme.events_by_metric".into() }
}

/// The crate (and directory) name of a tool: `acme.top_nodes` → `acme-top-nodes`.
pub fn crate_name(tool: &str) -> String {
    tool.replace(['.', '_'], "-")
}

/// Creates a tool crate for `name` in `dir` (default: `./<crate name>`); returns the directory.
pub fn new_tool(name: &str, dir: Option<&Path>, pdk: &Path) -> anyhow::Result<PathBuf> {
    if !is_valid_tool_name(name) {
        bail!(
            "invalid tool name {name:?}: tool names match ^[a-z][a-z0-9_.]{{1,127}}$ (lowercase letters, digits, \
             '_' and '.', starting with a letter), for example {:?}",
            suggest_tool_name(name)
        );
    }
    let krate = crate_name(name);
    let dir = dir.map_or_else(|| PathBuf::from(&krate), Path::to_owned);
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty; choose another name or pass --dir", dir.display());
    }
    let pdk = pdk.canonicalize().with_context(|| {
        format!(
            "the guest helper crate sluice-pdk is not at {}; pass --pdk <dir> (plugins/pdk in the Sluice sources) \
             or set SLUICE_PDK",
            pdk.display()
        )
    })?;
    anyhow::ensure!(pdk.join("Cargo.toml").is_file(), "{} has no Cargo.toml: it is not the sluice-pdk crate", pdk.display());

    let cargo_toml = TOOL_CARGO_TOML
        .replacen(&format!("name = \"{TEMPLATE_CRATE_NAME}\""), &format!("name = \"{krate}\""), 1)
        .replacen(
            &format!("path = \"{TEMPLATE_PDK_PATH}\""),
            &format!("path = {}", toml_string(&pdk.to_string_lossy())),
            1,
        );
    let lib_rs = TOOL_LIB_RS.replace(TEMPLATE_TOOL_NAME, name);
    let readme = TOOL_README.replace(TEMPLATE_TOOL_NAME, name);
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in [
        ("Cargo.toml", cargo_toml.as_str()),
        ("src/lib.rs", lib_rs.as_str()),
        ("README.md", readme.as_str()),
        ("Cargo.lock", WORKSPACE_LOCK),
        (".gitignore", "/target\n/.sluice\n/sluice-cache\n*.duckdb\n*.duckdb.wal\n"),
    ] {
        std::fs::write(dir.join(file), text).with_context(|| format!("writing {}", dir.join(file).display()))?;
    }
    Ok(dir)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A built component.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    pub path: PathBuf,
    pub size: u64,
    pub digest: String,
}

/// Checks that rustc can build for [`TARGET`].
pub fn check_target() -> anyhow::Result<()> {
    let out = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .stderr(Stdio::null())
        .output()
        .context("running rustc: is a Rust toolchain installed? (https://rustup.rs)")?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !libdir.is_dir() {
        bail!("the {TARGET} target is not installed: run `rustup target add {TARGET}`, then build again");
    }
    Ok(())
}

/// Builds the plugin crate in `dir` for [`TARGET`] (release profile). Cargo's progress and the
/// compiler's messages go to stderr.
pub fn build(dir: &Path) -> anyhow::Result<Built> {
    let manifest = dir.join("Cargo.toml");
    anyhow::ensure!(
        manifest.is_file(),
        "no Cargo.toml in {}: pass the directory of a plugin crate (`sluice plugin new tool NAME` makes one)",
        dir.display()
    );
    check_target()?;
    let manifest = manifest.canonicalize()?;
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", TARGET, "--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("the build of {} failed (the compiler's messages are above)", dir.display());
    }
    let mut wasm = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" || msg["manifest_path"].as_str().map(Path::new) != Some(manifest.as_path()) {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            wasm = files.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".wasm")).map(PathBuf::from).or(wasm);
        }
    }
    let path = wasm.with_context(|| {
        format!("cargo built {} but produced no .wasm: is it a library with crate-type = [\"cdylib\"]?", dir.display())
    })?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Built { size: bytes.len() as u64, digest: hex::encode(Sha256::digest(&bytes)), path })
}

/// What kind of file a `.wasm` is, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    Component,
    CoreModule,
    NotWasm,
}

/// Reads the header: `\0asm`, then version 1 (core module) or layer 1 (component).
pub fn wasm_kind(bytes: &[u8]) -> WasmKind {
    match bytes {
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => WasmKind::Component,
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => WasmKind::CoreModule,
        _ => WasmKind::NotWasm,
    }
}

/// What a component would be granted for one of its imports.
pub fn grant_of(import: &str) -> &'static str {
    let iface = import.split('@').next().unwrap_or(import);
    match iface {
        "sluice:plugin/query" => "read-only DuckDB queries (row cap and timeout of the host)",
        "sluice:plugin/log" => "the host's log",
        "sluice:plugin/tool-types" | "sluice:plugin/sink-types" => "types only: nothing to grant",
        i if i.starts_with("wasi:http/") => "sinks: requests to the hosts of the sink's settings; tools: denied",
        i if i.starts_with("wasi:sockets/") => "sinks: connections to the addresses of the sink's settings; tools: denied",
        "wasi:cli/environment" => "granted, empty: no variables, no arguments",
        "wasi:cli/exit" => "granted: exiting ends the call with an error",
        "wasi:cli/stdin" | "wasi:cli/stdout" | "wasi:cli/stderr" => "granted: stdin is empty, output is discarded",
        i if i.starts_with("wasi:cli/terminal") => "granted: no terminal",
        i if i.starts_with("wasi:clocks/") => "granted: wall and monotonic clocks",
        i if i.starts_with("wasi:random/") => "granted: random bytes",
        i if i.starts_with("wasi:io/") => "granted: streams and polling",
        i if i.starts_with("wasi:filesystem/") => "linked, denied: no directory is opened to tools",
        _ => "NOT PROVIDED: the component cannot be loaded",
    }
}

/// `sluice plugin inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    pub size: u64,
    pub digest: String,
    /// `sluice:plugin/tool` or `sluice:plugin/sink`, or `None` for a component of another world.
    pub world: Option<&'static str>,
    pub exports: Vec<String>,
    /// Each import with what it would be granted.
    pub imports: Vec<(String, &'static str)>,
    /// The tool's `describe` answer (a tool world component that loads).
    pub describe: Option<serde_json::Value>,
    /// Why a tool world component was refused.
    pub load_error: Option<String>,
}

/// Inspects a component file. A file that is not a component is an error that says what it is.
pub fn inspect(runtime: &Runtime, path: &Path) -> anyhow::Result<Inspection> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match wasm_kind(&bytes) {
        WasmKind::Component => {}
        WasmKind::CoreModule => bail!(
            "{} is a core WebAssembly module, not a component; Sluice loads components: build with \
             `--target {TARGET}` (rustc emits a component for it), or `sluice plugin build`",
            path.display()
        ),
        WasmKind::NotWasm => bail!("{} is not a WebAssembly file (it does not start with \\0asm)", path.display()),
    }
    let ComponentShape { imports, exports } = runtime
        .component_shape(&bytes)
        .with_context(|| format!("{} is not a valid WebAssembly component", path.display()))?;
    let has = |name: &str| exports.iter().any(|e| e == name);
    let is_tool = has("describe") && has("call");
    let is_sink = has("describe") && has("probe") && has("export");
    let (describe, load_error) = if is_sink {
        match runtime.load_sink(path) {
            Ok(s) => {
                let i = &s.info;
                (
                    Some(serde_json::json!({
                        "type": i.sink_type,
                        "version": i.version,
                        "description": i.description,
                        "family": format!("{:?}", i.family).to_lowercase(),
                        "capabilities": {
                            "stream": i.capabilities.stream,
                            "supports_delete": i.capabilities.supports_delete,
                            "object_store": i.capabilities.object_store,
                            "accepts_parts": i.capabilities.accepts_parts,
                        },
                        "formats": i.formats,
                    })),
                    None,
                )
            }
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    } else if is_tool {
        match runtime.load_file(path) {
            Ok(t) => (
                Some(serde_json::json!({
                    "name": t.name,
                    "version": t.version,
                    "description": t.description,
                    "allow_tenant_scoped": t.allow_tenant_scoped,
                    "input_schema": t.input_schema,
                    "output_schema": t.output_schema,
                })),
                None,
            ),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    } else {
        (None, None)
    };
    Ok(Inspection {
        path: path.to_owned(),
        size: bytes.len() as u64,
        digest: hex::encode(Sha256::digest(&bytes)),
        world: if is_sink {
            Some("sluice:plugin/sink")
        } else if is_tool {
            Some("sluice:plugin/tool")
        } else {
            None
        },
        exports,
        imports: imports.into_iter().map(|i| {
            let g = grant_of(&i);
            (i, g)
        }).collect(),
        describe,
        load_error,
    })
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "file      {}", self.path.display())?;
        writeln!(f, "size      {}", human_size(self.size))?;
        writeln!(f, "digest    sha256:{}", self.digest)?;
        match self.world {
            Some(w) if w.ends_with("/sink") => writeln!(f, "world     {w} (exports describe, probe, export)")?,
            Some(w) => writeln!(f, "world     {w} (exports describe, call)")?,
            None => writeln!(
                f,
                "world     not a Sluice tool: it exports {}; a tool exports `describe` and `call` (world sluice:plugin/tool), \
                 a sink `describe`, `probe` and `export` (world sluice:plugin/sink)",
                if self.exports.is_empty() { "nothing".into() } else { self.exports.join(", ") }
            )?,
        }
        if let Some(d) = self.describe.as_ref().filter(|d| d.get("type").is_some()) {
            writeln!(f, "sink      {} {}", d["type"].as_str().unwrap_or(""), d["version"].as_str().unwrap_or(""))?;
            writeln!(f, "          {}", d["description"].as_str().unwrap_or(""))?;
            writeln!(f, "          family {}, formats {}, capabilities {}", d["family"].as_str().unwrap_or(""), d["formats"], d["capabilities"])?;
        } else if let Some(d) = &self.describe {
            writeln!(f, "tool      {} {}", d["name"].as_str().unwrap_or(""), d["version"].as_str().unwrap_or(""))?;
            writeln!(f, "          {}", d["description"].as_str().unwrap_or(""))?;
            let scoped = if d["allow_tenant_scoped"] == true { "allowed" } else { "refused" };
            writeln!(f, "          tenant-scoped bearers: {scoped}")?;
            writeln!(f, "input     {}", d["input_schema"])?;
            writeln!(f, "output    {}", d["output_schema"])?;
        }
        if let Some(e) = &self.load_error {
            writeln!(f, "refused   {e}")?;
        }
        writeln!(f, "imports   (what it would be granted)")?;
        let width = self.imports.iter().map(|(i, _)| i.len()).max().unwrap_or(0);
        for (i, g) in &self.imports {
            writeln!(f, "  {i:<width$}  {g}")?;
        }
        Ok(())
    }
}

/// `45.1 KB`.
pub fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_valid_names() {
        for bad in ["Acme-Hello", "1tool", "-", "", "top nodes!", "ACME.Top-Nodes", &"x".repeat(300)] {
            let s = suggest_tool_name(bad);
            assert!(is_valid_tool_name(&s), "{bad:?} → {s:?}");
        }
        assert_eq!(suggest_tool_name("Acme-Hello"), "acme_hello");
        assert_eq!(crate_name("acme.top_nodes"), "acme-top-nodes");
    }

    #[test]
    fn wasm_kinds_from_headers() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), WasmKind::CoreModule);
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0rest"), WasmKind::Component);
        assert_eq!(wasm_kind(b"#!/bin/sh\n"), WasmKind::NotWasm);
        assert_eq!(wasm_kind(b""), WasmKind::NotWasm);
    }

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    }
}
