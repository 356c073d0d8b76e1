//! PostgreSQL `LISTEN`: one dedicated connection (outside the pool, which
//! would hand it to other work) that turns notifications into a stream.
//!
//! Notifications are lossy across a reconnect: whatever was sent while no
//! connection listened is gone. `Listener::next` therefore reports each
//! (re)connection as `Heard::Listening`, and the caller re-checks everything
//! it could have missed then; a connection that ends is reported as
//! `Heard::Deaf` (nothing is heard until the next `Listening`).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// The `application_name` of listening connections.
pub const APPLICATION_NAME: &str = "shepherd-listener";

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// The connection is (again) listening; anything before was missed.
    Listening,
    /// The connection ended: notifications sent from now until the next
    /// `Listening` are missed.
    Deaf,
    Notification {
        channel: String,
        payload: String,
    },
}

/// Listens on `channels` of the database at `url`, reconnecting with
/// backoff for as long as it is wanted.
pub struct Listener {
    url: String,
    channels: Vec<String>,
    stop: CancellationToken,
    heard: Option<mpsc::UnboundedReceiver<AsyncMessage>>,
    /// The current connection's client: the session (and its LISTENs) lasts
    /// as long as it does.
    client: Option<tokio_postgres::Client>,
    backoff: Backoff,
}

impl Listener {
    pub fn new(url: &str, channels: &[&str], stop: CancellationToken) -> Self {
        Self {
            url: url.to_owned(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            stop,
            heard: None,
            client: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// The next thing heard; None once stopped.
    pub async fn next(&mut self) -> Option<Heard> {
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            let Some(heard) = self.heard.as_mut() else {
                match self.connect().await {
                    Ok(heard) => {
                        self.heard = Some(heard);
                        self.backoff.reset();
                        return Some(Heard::Listening);
                    }
                    Err(err) => {
                        let delay = self.backoff.next_delay();
                        tracing::warn!(error = %err, retry_in = ?delay, "could not LISTEN for wake-ups");
                        tokio::select! {
                            _ = self.stop.cancelled() => return None,
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                }
            };
            match heard.recv().await {
                Some(AsyncMessage::Notification(note)) => {
                    return Some(Heard::Notification {
                        channel: note.channel().to_owned(),
                        payload: note.payload().to_owned(),
                    });
                }
                Some(_) => {}
                None => {
                    tracing::warn!("the LISTEN connection ended; reconnecting");
                    self.heard = None;
                    self.client = None;
                    return Some(Heard::Deaf);
                }
            }
        }
    }

    /// Opens the connection, drives it in a task of its own (which forwards
    /// what it hears), and subscribes to the channels.
    async fn connect(
        &mut self,
    ) -> Result<mpsc::UnboundedReceiver<AsyncMessage>, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = self.url.parse()?;
        // Named, so an operator (or a test) can find it in pg_stat_activity.
        config
            .application_name(APPLICATION_NAME)
            .connect_timeout(crate::db::POOL_WAIT);
        let (client, mut connection) = config.connect(NoTls).await?;
        let (forward, heard) = mpsc::unbounded_channel();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    message = messages.next() => match message {
                        Some(Ok(message)) => {
                            if forward.send(message).is_err() {
                                return;
                            }
                        }
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "the LISTEN connection failed");
                            return;
                        }
                        None => return,
                    },
                }
            }
        });
        for channel in &self.channels {
            // Channel names are ours (constants), never input.
            client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await?;
        }
        self.client = Some(client);
        Ok(heard)
    }
}
