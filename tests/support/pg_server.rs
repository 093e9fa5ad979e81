//! A throwaway PostgreSQL server (Debian's `postgresql`) for the tests and the `sinks` benchmark:
//! `initdb` with SCRAM authentication and a superuser `postgres` in a directory of the caller's,
//! started on a free loopback port, stopped immediately on drop. Included by path
//! (`#[path = ...] mod`) so the benchmark and the test crate share it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    pub password: String,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PgServer {
    /// initdb in `dir` (which must exist and be empty) and start the server.
    pub fn start(dir: &Path, password: &str) -> Self {
        let bin = std::env::var_os("SLUICE_PG_BIN").map(PathBuf::from).unwrap_or_else(|| {
            let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .expect("PostgreSQL is not installed (Debian's `postgresql`; .ci/run installs it)")
                .filter_map(|e| Some(e.ok()?.path().join("bin")))
                .filter(|p| p.join("initdb").exists())
                .collect();
            found.sort();
            found.pop().expect("no /usr/lib/postgresql/<version>/bin/initdb")
        });
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status().unwrap();
            assert!(ok.success(), "chown to the postgres user failed");
        }
        let pg = Self { bin, dir: dir.to_owned(), port: free_port(), password: password.to_owned() };
        let out = pg
            .as_postgres("initdb")
            .arg("-D")
            .arg(pg.data())
            .args(["-A", "scram-sha-256", "-U", "postgres", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        pg.start_server();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's log (for what it refused).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A command run as the `postgres` user when we are root (the server refuses root).
    fn as_postgres(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    pub fn start_server(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let out = self
            .as_postgres("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .arg("start")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
    }

    pub fn stop_server(&self, mode: &str) {
        let _ = self.as_postgres("pg_ctl").args(["-w", "-m", mode, "-D"]).arg(self.data()).arg("stop").stdout(Stdio::null()).output();
    }

    /// `postgres://user@127.0.0.1:port/postgres`.
    pub fn url(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }

    /// `psql` as the superuser, quiet, unaligned, tuples only, stopping at the first error.
    pub fn psql_command(&self) -> Command {
        let mut c = Command::new("psql");
        c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .env("PGPASSWORD", &self.password);
        c
    }

    /// Runs SQL with `psql`; its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.psql_command().args(["-c", sql]).output().unwrap();
        assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_server("immediate");
    }
}
