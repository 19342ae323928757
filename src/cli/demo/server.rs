//! Finding a PostgreSQL server for the demo: `DATABASE_URL`, else the local server, else a
//! throwaway cluster started from the installed binaries; and a fresh database on it,
//! dropped at the end unless kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::cli::CliError;

/// Where the demo's database lives.
pub(super) struct Server {
    /// Connection options to the server's maintenance database.
    admin: PgConnectOptions,
    pub(super) describe: String,
    pub(super) database: String,
    cluster: Option<Cluster>,
    created: bool,
}

impl Server {
    pub(super) async fn find(force_cluster: bool) -> Result<Server, CliError> {
        let database = format!("im1_demo_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut server = if let (Ok(url), false) = (std::env::var("DATABASE_URL"), force_cluster) {
            let options: PgConnectOptions =
                url.parse().map_err(|_| CliError::Input("DATABASE_URL is not a valid PostgreSQL URL".into()))?;
            let describe = format!("{}:{} (from DATABASE_URL)", options.get_host(), options.get_port());
            Server { admin: options.database("postgres"), describe, database, cluster: None, created: false }
        } else {
            let local = PgConnectOptions::new().host("127.0.0.1").port(5432).username("postgres").database("postgres");
            let reachable = !force_cluster
                && tokio::time::timeout(Duration::from_secs(3), local.connect()).await.is_ok_and(|c| c.is_ok());
            if reachable {
                Server {
                    admin: local,
                    describe: "127.0.0.1:5432 (local server)".into(),
                    database,
                    cluster: None,
                    created: false,
                }
            } else {
                let cluster = Cluster::start().await.map_err(CliError::Other)?;
                let admin = PgConnectOptions::new()
                    .host("127.0.0.1")
                    .port(cluster.port)
                    .username("postgres")
                    .database("postgres");
                let describe = format!("a throwaway cluster on 127.0.0.1:{}", cluster.port);
                Server { admin, describe, database, cluster: Some(cluster), created: false }
            }
        };
        let mut conn = server
            .admin
            .connect()
            .await
            .map_err(|e| CliError::Other(anyhow!("cannot connect to {}: {e}", server.describe)))?;
        // The name is ours: `im1_demo_` and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", server.database)))
            .execute(&mut conn)
            .await
            .map_err(|e| CliError::Other(anyhow!("cannot create the demo database on {}: {e}", server.describe)))?;
        server.created = true;
        let _ = conn.close().await;
        Ok(server)
    }

    pub(super) fn database_url(&self) -> SecretString {
        let o = &self.admin;
        let mut url = reqwest::Url::parse("postgres://localhost/").expect("static URL parses");
        let _ = url.set_host(Some(o.get_host()));
        let _ = url.set_port(Some(o.get_port()));
        let _ = url.set_username(o.get_username());
        url.set_path(&self.database);
        if let Ok(env) = std::env::var("DATABASE_URL")
            && self.cluster.is_none()
            && let Ok(parsed) = reqwest::Url::parse(&env)
        {
            // Keep password and parameters from the operator's URL; only the database differs.
            let mut with_db = parsed;
            with_db.set_path(&self.database);
            return SecretString::from(with_db.to_string());
        }
        SecretString::from(url.to_string())
    }

    pub(super) async fn cleanup(&mut self, keep: bool) -> anyhow::Result<()> {
        if self.created && !keep {
            let mut conn = self.admin.connect().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database)))
                .execute(&mut conn)
                .await?;
            let _ = conn.close().await;
        }
        if let Some(cluster) = self.cluster.take() {
            if keep {
                println!(
                    "The throwaway cluster keeps running at {}; stop it with: pg_ctl -D {} stop",
                    self.describe,
                    cluster.dir.display()
                );
            } else {
                cluster.stop().await?;
            }
        }
        Ok(())
    }
}

/// A PostgreSQL cluster of our own, for machines with the binaries but no server.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    async fn start() -> anyhow::Result<Cluster> {
        let bin = find_pg_bin().ok_or_else(|| {
            anyhow!(
                "no PostgreSQL server answers at 127.0.0.1:5432 and no PostgreSQL binaries were found.\n\
                 Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL."
            )
        })?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let dir = std::env::temp_dir().join(format!("im1-demo-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root: run the cluster as the `postgres` system user.
        let as_postgres = is_root();
        if as_postgres {
            let status = tokio::process::Command::new("chown").arg("postgres:postgres").arg(&dir).status().await?;
            if !status.success() {
                bail!("running as root, and cannot hand {} to the postgres user", dir.display());
            }
        }
        let cluster = Cluster { dir, bin, port, as_postgres };
        let data = cluster.dir.join("data");
        cluster
            .pg(
                &cluster.bin.join("initdb"),
                &["-D", path(&data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            )
            .await
            .context("initdb")?;
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", port, path(&cluster.dir));
        let log = cluster.dir.join("log");
        cluster
            .pg(&cluster.bin.join("pg_ctl"), &["-D", path(&data), "-l", path(&log), "-o", &opts, "-w", "start"])
            .await
            .context("starting the throwaway cluster")?;
        Ok(cluster)
    }

    async fn pg(&self, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = if self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            tokio::process::Command::new(program)
        };
        let out = cmd.args(args).output().await.with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!("{} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let stopped = self.pg(&self.bin.join("pg_ctl"), &["-D", path(&data), "-m", "fast", "-w", "stop"]).await;
        std::fs::remove_dir_all(&self.dir)?;
        stopped
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The newest installed PostgreSQL's bin directory (Debian layout), or one on PATH.
fn find_pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(PathBuf::from).find(|d| d.join("initdb").exists())
    })
}
