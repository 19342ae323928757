//! A PostgreSQL cluster the suite owns: created with Debian's `pg_createcluster` on a free
//! port (initdb runs as the `postgres` user; it refuses root), restarted and starved by the
//! scenarios, dropped at the end. Never the shared server other tests use.

use std::process::Command;

/// Connections the owned server allows: small, so exhausting them is cheap and certain,
/// and ample for three workers (a pool of 8 each) and the suite's own connections.
pub const MAX_CONNECTIONS: u32 = 60;

pub struct Cluster {
    version: String,
    name: String,
    pub port: u16,
}

/// Runs a command as root (directly when we are root, else through `sudo -n`), failing
/// with its output.
fn as_root(program: &str, args: &[&str]) -> Result<String, String> {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let mut command = if root {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", program]);
        sudo
    };
    let out = command.args(args).output().map_err(|e| format!("{program}: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(format!("{program} {}: {text}", args.join(" "))) }
}

impl Cluster {
    /// Creates and starts a cluster of our own, after dropping any a killed earlier run
    /// left behind.
    pub fn create() -> Result<Cluster, String> {
        let version = std::fs::read_dir("/etc/postgresql")
            .map_err(|e| format!("/etc/postgresql: {e} (scripts/ensure-postgres installs PostgreSQL)"))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
            .ok_or("no PostgreSQL version under /etc/postgresql")?;
        drop_leftovers(&version);
        let name = format!("im1chaos{}", std::process::id());
        let port = super::free_port();
        let max_connections = format!("max_connections={MAX_CONNECTIONS}");
        as_root(
            "pg_createcluster",
            &[
                "--quiet",
                "--port",
                &port.to_string(),
                "--start-conf",
                "manual",
                "-o",
                &max_connections,
                &version,
                &name,
                "--",
                "--auth=trust",
            ],
        )?;
        let cluster = Cluster { version, name, port };
        cluster.start()?;
        Ok(cluster)
    }

    /// A connection URL for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server: `immediate` is a crash (recovery on the next start), `fast` a clean
    /// shutdown that ends every session.
    pub fn stop(&self, mode: &str) -> Result<(), String> {
        as_root("pg_ctlcluster", &["--skip-systemctl-redirect", &self.version, &self.name, "stop", "-m", mode])
            .map(drop)
    }

    pub fn start(&self) -> Result<(), String> {
        as_root("pg_ctlcluster", &["--skip-systemctl-redirect", &self.version, &self.name, "start"]).map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_root("pg_dropcluster", &["--stop", &self.version, &self.name]);
    }
}

/// Drops clusters named after a suite process that no longer exists.
fn drop_leftovers(version: &str) {
    let Ok(entries) = std::fs::read_dir(format!("/etc/postgresql/{version}")) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("im1chaos") else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = as_root("pg_dropcluster", &["--stop", version, &name]);
        }
    }
}
