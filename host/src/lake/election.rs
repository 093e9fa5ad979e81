//! The writer election: one PostgreSQL session per gateway, trying
//! `pg_try_advisory_lock` every tick until it holds it, then checking the session every tick.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;

use super::{Role, Shared, TICK};

/// The tables the replicas share, in the catalog's database.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS sluice_lake_writer (
    lake    text PRIMARY KEY,
    replica text NOT NULL,
    url     text NOT NULL,
    since   timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS sluice_export_schedule (
    lake     text NOT NULL,
    export   text NOT NULL,
    last_run timestamptz NOT NULL,
    PRIMARY KEY (lake, export)
);";

/// Runs until the gateway resigns: connects (again after any failure) and campaigns.
pub(super) async fn run(shared: Arc<Shared>, url: String) {
    let mut failing = false;
    while !shared.resign.is_cancelled() {
        let outcome = match connect(&shared).await {
            Ok(client) => {
                let client = Arc::new(client);
                *shared.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
                failing = false;
                campaign(&shared, &client, &url).await
            }
            Err(e) => Err(e),
        };
        step_down(&shared);
        *shared.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Err(e) = outcome {
            if !std::mem::replace(&mut failing, true) {
                tracing::warn!(error = %format!("{e:#}"), "The lake's catalog cannot be reached for the writer election; retrying.");
            }
            tokio::select! {
                () = shared.resign.cancelled() => {}
                () = tokio::time::sleep(TICK * 2) => {}
            }
        }
    }
    tracing::info!("Resigned from the writer election.");
}

/// One session: tries for the lock each tick; as writer, checks the session each tick. Returns
/// when the session fails (the lock, if held, is gone with it) or the gateway resigns (the
/// client is dropped, closing the session and freeing the lock).
async fn campaign(shared: &Shared, client: &tokio_postgres::Client, url: &str) -> anyhow::Result<()> {
    // Two gateways starting together may race on CREATE TABLE IF NOT EXISTS: serialise it.
    client
        .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock(hashtext('sluice-setup')); {TABLES} COMMIT;"))
        .await
        .context("creating the coordination tables")?;
    let key = format!("sluice-writer {}", shared.opts.data_path);
    let lake = shared.opts.data_path.as_str();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.resign.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        if shared.writer.load(Ordering::Acquire) {
            client.simple_query("SELECT 1").await.context("the writer's catalog session")?;
            continue;
        }
        let got: bool = client.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key]).await?.get(0);
        if got {
            client
                .execute(
                    "INSERT INTO sluice_lake_writer (lake, replica, url, since) VALUES ($1, $2, $3, now()) \
                     ON CONFLICT (lake) DO UPDATE SET replica = EXCLUDED.replica, url = EXCLUDED.url, since = EXCLUDED.since",
                    &[&lake, &shared.replica, &url],
                )
                .await
                .context("recording this gateway as the writer")?;
            *shared.writer_url.lock().unwrap_or_else(|p| p.into_inner()) = Some(url.to_owned());
            shared.writer.store(true, Ordering::Release);
            shared.role.send_replace(Role::Writer);
            tracing::info!(replica = %shared.replica, url, "This gateway is the lake's writer.");
        } else {
            let row = client.query_opt("SELECT url FROM sluice_lake_writer WHERE lake = $1", &[&lake]).await?;
            *shared.writer_url.lock().unwrap_or_else(|p| p.into_inner()) = row.map(|r| r.get(0));
        }
    }
}

fn step_down(shared: &Shared) {
    if shared.writer.swap(false, Ordering::AcqRel) {
        shared.role.send_replace(Role::Reader);
        tracing::warn!(replica = %shared.replica, "This gateway is no longer the lake's writer.");
    }
}

/// A session to the catalog: TLS when the server offers it, and required off loopback; TCP
/// keepalives so a vanished peer is noticed.
async fn connect(shared: &Shared) -> anyhow::Result<tokio_postgres::Client> {
    let dsn = crate::secret::resolve("database.ducklake.catalog", &shared.opts.catalog)?;
    let mut config: tokio_postgres::Config = dsn.parse().map_err(|e| anyhow::anyhow!("the catalog's connection string: {e}"))?;
    let local = config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    });
    if !local {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    config
        .application_name("sluice-coordinator")
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(crate::tls::client_config(shared.opts.ca_file.as_deref())?);
    let (client, connection) = config.connect(tls).await.context("connecting to the catalog")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "The catalog session ended.");
        }
    });
    Ok(client)
}
