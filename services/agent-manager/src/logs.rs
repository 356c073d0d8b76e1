//! Bounded per-agent log files: `<dir>/<agent_id>/<stream>.log` plus one
//! rotated `<stream>.log.1`.
//!
//! An agent writes its stdout and stderr straight into its files (opened
//! for appending), not through the manager: its output must keep flowing
//! while no manager runs (live restore). The manager rotates the files
//! from outside, copy-then-truncate (a file the agent holds open cannot be
//! renamed away under it): every `ROTATE_EVERY`, a file past half the
//! budget is copied to `.log.1` and truncated. An agent thus uses about
//! `max_bytes` per stream, plus what it writes within one check; lines
//! written between the copy and the truncation are lost.

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often files are checked for rotation.
pub(crate) const ROTATE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    const ALL: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

    fn file_name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout.log",
            Self::Stderr => "stderr.log",
        }
    }
}

/// Where agents' logs live and how large they may grow.
#[derive(Debug, Clone)]
pub(crate) struct LogDir {
    root: PathBuf,
    max_bytes: u64,
}

impl LogDir {
    pub(crate) fn new(root: PathBuf, max_bytes: u64) -> Self {
        Self {
            root,
            max_bytes: max_bytes.max(2),
        }
    }

    fn path(&self, agent: Uuid, stream: LogStream) -> PathBuf {
        self.root.join(agent.to_string()).join(stream.file_name())
    }

    /// The agent's stdout and stderr files, opened for appending, to hand
    /// to its process.
    pub(crate) fn open(&self, agent: Uuid) -> io::Result<(std::fs::File, std::fs::File)> {
        std::fs::create_dir_all(self.root.join(agent.to_string()))?;
        let open = |stream| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(agent, stream))
        };
        Ok((open(LogStream::Stdout)?, open(LogStream::Stderr)?))
    }

    /// Rotates every agent's files that reached half the budget, every
    /// `ROTATE_EVERY`, until `stop`.
    pub(crate) async fn rotate_periodically(self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(ROTATE_EVERY);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => return,
            }
            let logs = self.clone();
            // File work blocks: off the async workers.
            let rotated = tokio::task::spawn_blocking(move || logs.rotate_all()).await;
            if let Ok(Err(err)) = rotated {
                tracing::warn!(error = %err, "log rotation pass failed");
            }
        }
    }

    /// One rotation pass over every agent's files.
    pub(crate) fn rotate_all(&self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let dir = entry?.path();
            for stream in LogStream::ALL {
                let path = dir.join(stream.file_name());
                if let Err(err) = self.rotate(&path)
                    && err.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %err, "could not rotate a log file");
                }
            }
        }
        Ok(())
    }

    /// Copies the file to `.1` and truncates it, once it reached half the
    /// budget. Keeps the newest half-budget of it if it grew past that.
    fn rotate(&self, path: &Path) -> io::Result<()> {
        let half = self.max_bytes / 2;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < half {
            return Ok(());
        }
        file.seek(io::SeekFrom::Start(len - half))?;
        let mut newest = Vec::with_capacity(usize::try_from(half).unwrap_or(0));
        Read::by_ref(&mut file)
            .take(half)
            .read_to_end(&mut newest)?;
        let mut old = std::fs::File::create(rotated(path))?;
        old.write_all(&newest)?;
        file.set_len(0)
    }

    /// The last `lines` lines of the stream (rotated file included).
    pub(crate) async fn tail(
        &self,
        agent: Uuid,
        stream: LogStream,
        lines: usize,
    ) -> io::Result<Vec<String>> {
        let path = self.path(agent, stream);
        let mut text = read_if_exists(&rotated(&path)).await?;
        text.push_str(&read_if_exists(&path).await?);
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        Ok(all[start..].iter().map(|line| (*line).to_owned()).collect())
    }

    /// Removes a deleted agent's logs.
    pub(crate) async fn remove(&self, agent: Uuid) {
        let dir = self.root.join(agent.to_string());
        if let Err(err) = tokio::fs::remove_dir_all(&dir).await
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%agent, error = %err, "could not remove agent logs");
        }
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

async fn read_if_exists(path: &Path) -> io::Result<String> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotation_bounds_size_and_tail_spans_files() {
        let root = std::env::temp_dir().join(format!("shepherd-logs-{}", Uuid::new_v4()));
        let logs = LogDir::new(root.clone(), 64);
        let agent = Uuid::new_v4();
        let (mut stdout, _stderr) = logs.open(agent).unwrap();
        for i in 0..40 {
            writeln!(stdout, "line {i}").unwrap();
            logs.rotate_all().unwrap();
        }

        let tail = logs.tail(agent, LogStream::Stdout, 3).await.unwrap();
        assert_eq!(tail, ["line 37", "line 38", "line 39"]);
        let dir = root.join(agent.to_string());
        let current = std::fs::metadata(dir.join("stdout.log")).unwrap().len();
        let old = std::fs::metadata(dir.join("stdout.log.1")).unwrap().len();
        assert!(current + old <= 64, "logs grew to {} bytes", current + old);
        // The writer appends at the new end after a truncation: no holes.
        writeln!(stdout, "after").unwrap();
        let text = std::fs::read(dir.join("stdout.log")).unwrap();
        assert!(!text.contains(&0), "no zero-filled hole after truncation");
        assert!(
            logs.tail(agent, LogStream::Stderr, 3)
                .await
                .unwrap()
                .is_empty()
        );
        logs.remove(agent).await;
        assert!(!dir.exists());
    }
}
