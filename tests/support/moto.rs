//! moto, an S3-compatible server (Python, installed into `SLUICE_MOTO_DIR` by `scripts/dev`),
//! on a free loopback port, stopped on drop. Shared by the tests and the `scale` benchmark.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    /// Starts the server and waits until it answers (at most 60 s).
    pub async fn start() -> Self {
        let dir = std::env::var("SLUICE_MOTO_DIR")
            .expect("SLUICE_MOTO_DIR is not set: run through `scripts/dev test` or `scripts/dev bench`, which install moto");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONPATH", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(&url).await.is_err() {
            assert!(Instant::now() < deadline, "moto did not start within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
