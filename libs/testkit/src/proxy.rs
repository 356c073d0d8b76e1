//! A TCP proxy a test can cut and restore: put it between a service and
//! PostgreSQL to make the database vanish (every open connection closed,
//! new ones refused) at a moment the test chooses, and come back.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections on its own loopback port to `upstream` while open.
/// Stops (closing everything) when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let (open, _) = watch::channel(true);
        let gate = open.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*gate.borrow() {
                    // Cut: refuse by closing at once.
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, upstream, gate.subscribe()));
            }
        });
        Ok(Self {
            addr,
            open,
            accepting,
        })
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }

    /// `url` (a PostgreSQL URL) pointing at this proxy instead of its host.
    pub fn url_for(&self, url: &str) -> anyhow::Result<String> {
        let scheme_end = url.find("://").context("not a URL")? + 3;
        let rest = &url[scheme_end..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let host_start = authority.rfind('@').map_or(0, |at| at + 1);
        Ok(format!(
            "{}{}{}{}",
            &url[..scheme_end],
            &authority[..host_start],
            self.addr,
            &rest[authority_end..]
        ))
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.open.send_replace(false);
        self.accepting.abort();
    }
}

/// Pipes one connection until either side closes or the proxy is cut.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
}

/// The host and port a PostgreSQL URL points at.
pub fn postgres_addr(url: &str) -> anyhow::Result<SocketAddr> {
    use std::str::FromStr;
    let config = tokio_postgres::Config::from_str(url)?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    Ok(format!("{host}:{port}").parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn rewrites_the_host_of_a_url() -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let proxy = TcpProxy::start("127.0.0.1:9".parse()?).await?;
            let url = proxy.url_for("postgres://postgres@127.0.0.1:5432/db?x=1")?;
            assert_eq!(url, format!("postgres://postgres@{}/db?x=1", proxy.addr));
            let url = proxy.url_for("postgres://h:5/db")?;
            assert_eq!(url, format!("postgres://{}/db", proxy.addr));
            anyhow::Ok(())
        })
    }

    #[tokio::test]
    async fn forwards_until_cut_and_again_after_restore() -> anyhow::Result<()> {
        // An echo server upstream.
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let upstream = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = TcpProxy::start(upstream).await?;
        let mut conn = TcpStream::connect(proxy.addr).await?;
        conn.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");

        proxy.cut();
        // The open connection is closed...
        let mut rest = Vec::new();
        assert_eq!(conn.read_to_end(&mut rest).await.unwrap_or(0), 0);
        // ...and a new one is refused (closed at once).
        let mut refused = TcpStream::connect(proxy.addr).await?;
        let _ = refused.write_all(b"ping").await;
        let mut got = Vec::new();
        assert_eq!(refused.read_to_end(&mut got).await.unwrap_or(0), 0);

        proxy.restore();
        let mut conn = TcpStream::connect(proxy.addr).await?;
        conn.write_all(b"pong").await?;
        conn.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok(())
    }
}
