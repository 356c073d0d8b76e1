//! A throwaway PostgreSQL cluster of its own (initdb in a temporary
//! directory, on a free port), for programs that restart or stop the
//! database: never the shared server other tests use.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// initdb and start a cluster on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let bin = newest_bin_dir_with("initdb")
            .context("no PostgreSQL binaries under /usr/lib/postgresql")?;
        let dir = std::env::temp_dir().join(format!("shepherd-cluster-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root: the cluster then runs as postgres.
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres").arg(&dir))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cluster = Self {
            dir,
            bin,
            port,
            as_postgres,
        };
        run(cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-A", "trust", "-U", "postgres"]))?;
        cluster.pg_ctl(&["start", "-w"])?;
        Ok(cluster)
    }

    /// The admin URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A fast restart (`pg_ctl restart -m fast`): every connection drops.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["restart", "-w", "-m", "fast"])
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, action: &[&str]) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off",
            self.port,
            self.dir.display()
        );
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-o", &options])
            .args(action))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The bin directory of the newest PostgreSQL installed under
/// /usr/lib/postgresql (Debian's layout) that has `program`.
pub fn newest_bin_dir_with(program: &str) -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            let major: u32 = dir.file_name()?.to_str()?.split('.').next()?.parse().ok()?;
            Some((major, dir.join("bin")))
        })
        .filter(|(_, bin)| bin.join(program).is_file())
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// Whether this process runs as root (its real uid, from /proc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .and_then(|line| line.split_whitespace().nth(1))
            == Some("0")
    })
}
