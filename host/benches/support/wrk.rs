//! Driving the real binary with `wrk` (Debian package `wrk`) from another process: one run's
//! figures, the Lua scripts that make its requests, and the gateway's CPU time from `/proc`.

#![allow(dead_code)] // Each benchmark uses what it needs.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Starts the release binary: `sluice serve` in `scratch` on loopback port 0 with the plugins in
/// `plugins/`, the bearers in `bearers.yaml`, plain HTTP, the configuration file `config` and
/// `extra` arguments; its log goes to `<name>.log`. Returns the process and the API's URL.
pub fn serve(scratch: &Path, name: &str, config: &Path, extra: &[&std::ffi::OsStr]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(scratch)
        .args(["serve", "--plugins", "plugins", "--bearer-acl-file", "bearers.yaml", "--insecure-no-tls"])
        .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(scratch.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let Some(api) = line.split_whitespace().nth(2) else {
        panic!("{name} did not start: {}", std::fs::read_to_string(scratch.join(format!("{name}.log"))).unwrap_or_default())
    };
    (child, api.trim_start_matches("api=").to_owned())
}

/// One run: requests per second, p50 and p99 in ms, the gateway's CPU time per request in µs.
pub type Round = (f64, f64, f64, f64);

/// CPU time the process `pid` has used so far (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("CLK_TCK")
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks
}

/// The `wrk` command for one run (one thread, `connections` keep-alive connections).
pub fn command(url: &str, script: &Path, connections: usize, duration: &str) -> Command {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{duration}"), "--latency", "-s"]).arg(script).arg(url);
    cmd
}

/// Reads a finished run's `RESULT` line: requests per second, p50 and p99 in ms, and the number
/// of requests. Every answer must have been a 2xx.
pub fn result(url: &str, out: &std::process::Output) -> (f64, f64, f64, f64) {
    let text = String::from_utf8_lossy(&out.stdout);
    let result = text.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| panic!("wrk: {text}"));
    let f: Vec<f64> = result.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(f[4], 0.0, "{url}: {} answers were not 2xx", f[4]);
    assert_eq!(f[5], 0.0, "{url}: {} socket errors", f[5]);
    (f[0] / (f[1] / 1e6), f[2] / 1000.0, f[3] / 1000.0, f[0])
}

/// One wrk run against the gateway process `pid`, with its CPU time per request.
pub fn run(url: &str, script: &Path, pid: u32, connections: usize, duration: &str) -> Round {
    let cpu_before = cpu_seconds(pid);
    let out = command(url, script, connections, duration).output().expect("wrk (apt-get install wrk)");
    let (rps, p50, p99, requests) = result(url, &out);
    let cpu = cpu_seconds(pid) - cpu_before;
    (rps, p50, p99, cpu * 1e6 / requests)
}

/// A script sending `method` with `body` (JSON) and `headers`, the bearer `token`, and printing
/// the `RESULT` line at the end.
pub fn script(scratch: &Path, name: &str, method: &str, body: &str, headers: &[(&str, &str)], token: &str) -> PathBuf {
    let mut lua = format!("wrk.method = {method:?}\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n");
    if !body.is_empty() {
        assert!(!body.contains("]==]"), "the body ends the Lua string");
        lua += &format!("wrk.body = [==[{body}]==]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n");
    }
    for (k, v) in headers {
        lua += &format!("wrk.headers[{k:?}] = {v:?}\n");
    }
    lua += "done = function(s, latency, requests)\n  local e = s.errors\n  \
            io.write(string.format(\"RESULT %d %d %d %d %d %d\\n\", s.requests, s.duration, latency:percentile(50), \
            latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))\nend\n";
    let path = scratch.join(format!("{name}.lua"));
    std::fs::write(&path, lua).unwrap();
    path
}

/// The median round by throughput.
pub fn median(mut v: Vec<Round>) -> Round {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v[v.len() / 2]
}
