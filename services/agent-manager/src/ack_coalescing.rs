//! A session's outbound messages, with report acknowledgements held back
//! to ride with the next message.
//!
//! An agent running one task at a time would otherwise wake up twice per
//! task: once for the `ReportAck` of its last report, and a few
//! milliseconds later for its next task. Messages that are ready together
//! go out in one write (tonic encodes every message a stream has ready into
//! one frame), so an acknowledgement held until the next message costs the
//! agent nothing. A late acknowledgement is harmless: the agent keeps the
//! report meanwhile and sends it again on a new session, where it is
//! recognised as already recorded.
//!
//! Order is kept: only acknowledgements are held, and any other message
//! sends the held ones first. They go alone after `HOLD_FOR` at most.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use crate::protocol::ToAgent;

/// Longest an acknowledgement waits for company.
pub(crate) const HOLD_FOR: Duration = Duration::from_millis(50);
/// Most acknowledgements held at once.
const MAX_HELD: usize = 64;

pub(crate) struct AckCoalescing {
    queue: mpsc::Receiver<ToAgent>,
    /// Acknowledgements waiting for company (or for `flush_at`).
    held: Vec<ToAgent>,
    /// Ready to go, in order.
    ready: VecDeque<ToAgent>,
    /// When the held acknowledgements go alone; set while any are held.
    flush_at: Option<Pin<Box<Sleep>>>,
    closed: bool,
}

impl AckCoalescing {
    pub(crate) fn new(queue: mpsc::Receiver<ToAgent>) -> Self {
        Self {
            queue,
            held: Vec::new(),
            ready: VecDeque::new(),
            flush_at: None,
            closed: false,
        }
    }

    fn release_held(&mut self) {
        self.ready.extend(self.held.drain(..));
        self.flush_at = None;
    }
}

impl Stream for AckCoalescing {
    type Item = ToAgent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ToAgent>> {
        let this = self.get_mut();
        loop {
            if let Some(message) = this.ready.pop_front() {
                return Poll::Ready(Some(message));
            }
            if this.closed {
                if this.held.is_empty() {
                    return Poll::Ready(None);
                }
                this.release_held();
                continue;
            }
            match this.queue.poll_recv(cx) {
                Poll::Ready(Some(ack @ ToAgent::ReportAck { .. })) => {
                    this.held.push(ack);
                    if this.held.len() >= MAX_HELD {
                        this.release_held();
                    } else if this.flush_at.is_none() {
                        this.flush_at = Some(Box::pin(tokio::time::sleep(HOLD_FOR)));
                    }
                }
                Poll::Ready(Some(message)) => {
                    this.release_held();
                    this.ready.push_back(message);
                }
                Poll::Ready(None) => this.closed = true,
                Poll::Pending => {
                    let due = this
                        .flush_at
                        .as_mut()
                        .is_some_and(|flush_at| flush_at.as_mut().poll(cx).is_ready());
                    if !due {
                        return Poll::Pending;
                    }
                    this.release_held();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{FutureExt, StreamExt};

    fn ack(task: &str) -> ToAgent {
        ToAgent::ReportAck {
            task_id: task.to_owned(),
            attempt: 1,
        }
    }

    fn names(messages: &[ToAgent]) -> Vec<String> {
        messages
            .iter()
            .map(|message| match message {
                ToAgent::ReportAck { task_id, .. } => format!("ack {task_id}"),
                ToAgent::Heartbeat => "heartbeat".to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Everything ready now, without waiting.
    fn ready_now(stream: &mut AckCoalescing) -> Vec<ToAgent> {
        let mut out = Vec::new();
        while let Some(Some(message)) = stream.next().now_or_never() {
            out.push(message);
        }
        out
    }

    #[tokio::test]
    async fn acks_wait_for_the_next_message_and_keep_their_place() {
        let (queue, rx) = mpsc::channel(16);
        let mut stream = AckCoalescing::new(rx);
        queue.send(ack("a")).await.unwrap();
        queue.send(ack("b")).await.unwrap();
        assert!(ready_now(&mut stream).is_empty(), "acks are held");
        queue.send(ToAgent::Heartbeat).await.unwrap();
        assert_eq!(
            names(&ready_now(&mut stream)),
            ["ack a", "ack b", "heartbeat"],
            "the next message takes them along, after them"
        );
    }

    #[tokio::test]
    async fn a_held_ack_goes_alone_after_the_hold_and_at_the_end() {
        let (queue, rx) = mpsc::channel(16);
        let mut stream = AckCoalescing::new(rx);
        queue.send(ack("a")).await.unwrap();
        assert!(ready_now(&mut stream).is_empty());
        let started = tokio::time::Instant::now();
        let alone = stream.next().await.unwrap();
        assert_eq!(names(&[alone]), ["ack a"]);
        assert!(started.elapsed() >= HOLD_FOR, "sent once the hold is over");

        queue.send(ack("b")).await.unwrap();
        drop(queue);
        assert_eq!(
            names(&ready_now(&mut stream)),
            ["ack b"],
            "a closing queue sends what it held"
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn many_acks_do_not_wait() {
        let (queue, rx) = mpsc::channel(2 * MAX_HELD);
        let mut stream = AckCoalescing::new(rx);
        for n in 0..MAX_HELD {
            queue.send(ack(&n.to_string())).await.unwrap();
        }
        assert_eq!(ready_now(&mut stream).len(), MAX_HELD);
    }
}
