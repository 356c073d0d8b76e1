//! Bounded per-agent log files: `<dir>/<agent_id>/<stream>.log` plus one
//! rotated `<stream>.log.1`. A file is rotated when it reaches half the
//! budget, so an agent never uses more than `max_bytes` per stream.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn file_name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout.log",
            Self::Stderr => "stderr.log",
        }
    }
}

/// Where agents' logs live and how large they may grow.
#[derive(Debug, Clone)]
pub struct LogDir {
    root: PathBuf,
    max_bytes: u64,
}

impl LogDir {
    pub fn new(root: PathBuf, max_bytes: u64) -> Self {
        Self {
            root,
            max_bytes: max_bytes.max(2),
        }
    }

    fn path(&self, agent: Uuid, stream: LogStream) -> PathBuf {
        self.root.join(agent.to_string()).join(stream.file_name())
    }

    /// Copies `reader` (a child's stdout or stderr) into the agent's log
    /// until end of file. Errors end the capture; they never affect the
    /// agent itself.
    pub async fn capture<R: AsyncRead + Unpin>(
        &self,
        agent: Uuid,
        stream: LogStream,
        mut reader: R,
    ) {
        let path = self.path(agent, stream);
        if let Err(err) = self.copy(&path, &mut reader).await {
            tracing::warn!(%agent, path = %path.display(), error = %err, "log capture stopped");
            // Keep draining so the child never blocks on a full pipe.
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
        }
    }

    async fn copy<R: AsyncRead + Unpin>(&self, path: &Path, reader: &mut R) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let rotate_at = self.max_bytes / 2;
        let mut file = append(path).await?;
        let mut written = file.metadata().await?.len();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return file.flush().await;
            }
            // Split the chunk at the rotation boundary, so no file ever
            // exceeds half the budget whatever the chunk size.
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                if written >= rotate_at {
                    file.flush().await?;
                    tokio::fs::rename(path, rotated(path)).await?;
                    file = append(path).await?;
                    written = 0;
                }
                let room = usize::try_from(rotate_at - written).unwrap_or(usize::MAX);
                let (now, rest) = chunk.split_at(room.min(chunk.len()));
                file.write_all(now).await?;
                written += now.len() as u64;
                chunk = rest;
            }
        }
    }

    /// The last `lines` lines of the stream (rotated file included).
    pub async fn tail(
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
    pub async fn remove(&self, agent: Uuid) {
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

async fn append(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
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
        let input: String = (0..40).map(|i| format!("line {i}\n")).collect();
        logs.capture(agent, LogStream::Stdout, input.as_bytes())
            .await;

        let tail = logs.tail(agent, LogStream::Stdout, 3).await.unwrap();
        assert_eq!(tail, ["line 37", "line 38", "line 39"]);
        let dir = root.join(agent.to_string());
        let current = std::fs::metadata(dir.join("stdout.log")).unwrap().len();
        let old = std::fs::metadata(dir.join("stdout.log.1")).unwrap().len();
        assert!(current + old <= 64, "logs grew to {} bytes", current + old);
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
