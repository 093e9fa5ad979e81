//! An OCI registry for the tests: Debian's `docker-registry` (the CNCF distribution server) on a
//! free loopback port with its storage in a scratch directory, and pushes by an independent
//! client, the oras project's Python library (installed into `SLUICE_ORAS_PY` by `scripts/dev`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OciRegistry {
    child: Option<Child>,
    config: PathBuf,
    /// `127.0.0.1:PORT`
    pub host: String,
}

impl OciRegistry {
    /// Starts a registry storing under `dir`.
    pub async fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                dir.join("registry-data").display()
            ),
        )
        .unwrap();
        let mut r = Self { child: None, config, host };
        r.resume().await;
        r
    }

    /// Starts it again after [`OciRegistry::stop`] (same storage, same port).
    pub async fn resume(&mut self) {
        let child = Command::new("docker-registry")
            .args(["serve", &self.config.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        self.child = Some(child);
        let url = format!("http://{}/v2/", self.host);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "docker-registry did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it (a registry that is down).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `oci://HOST/<repo>:<tag>`
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("oci://{}/{repo_tag}", self.host)
    }

    /// Pushes `bytes` as `<repo>:<tag>` with oras (an `application/wasm` layer); returns the
    /// manifest digest the registry reports.
    pub async fn oras_push(&self, repo_tag: &str, bytes: &[u8], scratch: &Path) -> String {
        let oras = std::env::var("SLUICE_ORAS_PY").expect("SLUICE_ORAS_PY is not set: run through `scripts/dev test`, which installs oras-py");
        let file = scratch.join(format!("push-{}.wasm", sha2_hex(bytes)));
        std::fs::write(&file, bytes).unwrap();
        let target = format!("{}/{repo_tag}", self.host);
        let script = "import sys\nimport oras.client\nc = oras.client.OrasClient(insecure=True)\n\
                      r = c.push(target=sys.argv[1], files=[sys.argv[2] + ':application/wasm'], disable_path_validation=True)\n\
                      print(r.headers.get('Docker-Content-Digest'))\n";
        let out = tokio::task::spawn_blocking(move || {
            Command::new("python3").args(["-c", script, &target, &file.display().to_string()]).env("PYTHONPATH", oras).output().unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "oras push failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let digest = stdout.lines().last().unwrap_or_default().trim().to_owned();
        assert!(digest.starts_with("sha256:"), "oras printed {stdout}");
        digest
    }
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(bytes)[..8])
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
