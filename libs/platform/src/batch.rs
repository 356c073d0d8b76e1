//! Group commit: many callers each submit one item and await their own
//! result, while one loop runs the items that are waiting together as a
//! single batch (one statement, one transaction).
//!
//! Why: on a busy service most of a statement's cost is per statement (a
//! round trip, parsing and planning, a commit and its WAL flush), not per
//! row. Items queue up while the batches in flight run, so the next batch
//! is bigger exactly when batching pays; an idle service runs a batch of
//! one at once. There is no timer and so no added latency: before taking a
//! batch the worker only yields to the runtime a few times, so that callers
//! woken by the same event (one notification wakes many runners, one
//! statement's results wake all of its callers) are queued by then and
//! join the batch instead of starting the next one.
//!
//! Submitting is cancel-safe for the batch: once an item is queued it runs
//! even if its caller goes away (the caller then just never sees the
//! result). Callers whose item must be followed by more work should not be
//! cancellable halfway either; see the agent-manager's dispatch.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// Splits item indexes into rounds in which no key repeats, keeping the
/// submission order of repeats: a batch statement that may touch a row only
/// once (an upsert) runs one round at a time.
pub fn rounds_of_distinct<'a, T, K: Hash + Eq>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<Vec<usize>> {
    let mut seen: HashMap<K, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let round = seen.entry(key(item)).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(index);
        *round += 1;
    }
    rounds
}

/// Yields to the runtime this often before a batch is taken (see
/// `BatchLimits::gather_yields`).
pub const GATHER_YIELDS: usize = 2;

/// Waits for at least one message, then gathers into `batch` what is queued
/// once the callers woken by the same event have had their turn (see the
/// module comment), up to `max` in all. Returns how many were added; 0 only
/// when the channel is closed and empty.
pub async fn recv_gathered<T>(
    queue: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    gather_yields: usize,
) -> usize {
    let before = batch.len();
    if queue.recv_many(batch, max.max(1)).await == 0 {
        return 0;
    }
    for _ in 0..gather_yields {
        tokio::task::yield_now().await;
    }
    while batch.len() - before < max {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    batch.len() - before
}

/// Why a submitted item has no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError<E> {
    /// The batch the item was part of failed as a whole.
    #[error(transparent)]
    Failed(E),
    /// The batcher is gone (the service is shutting down), or a batch
    /// function broke its contract of one output per item.
    #[error("the batch worker stopped")]
    Stopped,
}

/// How a batcher groups items.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most items in one batch.
    pub max_items: usize,
    /// Most batches running at once. One maximises batch sizes; two lets a
    /// batch execute while the previous one commits.
    pub max_in_flight: usize,
    /// How many times the worker yields to the runtime after the first
    /// item of a batch arrives and before it takes the rest: callers that
    /// are runnable but have not submitted yet get to do so. Costs nothing
    /// when nothing else is runnable (a yield then returns at once).
    pub gather_yields: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        // One batch at a time: measured with 50 workflows of max
        // concurrency 1 (a pipeline with few items in each stage), two in
        // flight split the same work into more, smaller statements (3.4
        // claims per statement instead of 5.5) and cost the database a
        // tenth more CPU for the same throughput.
        // Two yields: in the same benchmark, 10-15% less CPU per task in
        // all (fewer, bigger statements) than none; four or eight gathered
        // no more.
        Self {
            max_items: 256,
            max_in_flight: 1,
            gather_yields: GATHER_YIELDS,
        }
    }
}

struct Job<I, O, E> {
    item: I,
    reply: oneshot::Sender<Result<O, BatchError<E>>>,
}

/// A handle to submit items; cheap to clone. The worker ends when every
/// handle is dropped.
pub struct Batcher<I, O, E> {
    queue: mpsc::Sender<Job<I, O, E>>,
}

impl<I, O, E> Clone for Batcher<I, O, E> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I, O, E> Batcher<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Starts the worker. `run` gets the items of one batch, in submission
    /// order, and must return exactly one output per item, in the same
    /// order; an error fails every item of the batch.
    pub fn spawn<F, Fut>(limits: BatchLimits, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, E>> + Send + 'static,
    {
        let limits = BatchLimits {
            max_items: limits.max_items.max(1),
            max_in_flight: limits.max_in_flight.max(1),
            ..limits
        };
        let (queue, jobs) = mpsc::channel(limits.max_items * limits.max_in_flight * 4);
        tokio::spawn(work(jobs, run, limits));
        Self { queue }
    }

    /// Submits one item and waits for its output.
    pub async fn submit(&self, item: I) -> Result<O, BatchError<E>> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send(Job { item, reply })
            .await
            .map_err(|_| BatchError::Stopped)?;
        result.await.unwrap_or(Err(BatchError::Stopped))
    }
}

async fn work<I, O, E, F, Fut>(mut jobs: mpsc::Receiver<Job<I, O, E>>, run: F, limits: BatchLimits)
where
    I: Send + 'static,
    O: Send + 'static,
    E: Clone + Send + 'static,
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, E>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    loop {
        // Wait for a free slot *before* taking items: while every slot is
        // busy, items pile up in the queue and the next batch takes them all.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if recv_gathered(
            &mut jobs,
            &mut batch,
            limits.max_items,
            limits.gather_yields,
        )
        .await
            == 0
        {
            return;
        }
        let (items, replies): (Vec<I>, Vec<_>) =
            batch.into_iter().map(|job| (job.item, job.reply)).unzip();
        let running = run(items);
        tokio::spawn(async move {
            let result = running.await;
            drop(slot);
            deliver(result, replies);
        });
    }
}

fn deliver<O, E: Clone>(
    result: Result<Vec<O>, E>,
    replies: Vec<oneshot::Sender<Result<O, BatchError<E>>>>,
) {
    match result {
        Ok(outputs) if outputs.len() == replies.len() => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                // A caller that went away does not want its result.
                let _ = reply.send(Ok(output));
            }
        }
        Ok(outputs) => {
            tracing::error!(
                items = replies.len(),
                outputs = outputs.len(),
                "a batch function returned the wrong number of outputs"
            );
            for reply in replies {
                let _ = reply.send(Err(BatchError::Stopped));
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(BatchError::Failed(err.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn repeated_keys_go_to_later_rounds_in_order() {
        let items = ["a", "b", "a", "c", "a", "b"];
        let rounds = rounds_of_distinct(&items, |item| *item);
        assert_eq!(rounds, vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
    }

    /// Polls `condition` until it holds, failing after a deadline.
    async fn wait_until(condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in time"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_output() {
        let batcher: Batcher<u32, u32, String> =
            Batcher::spawn(BatchLimits::default(), |items: Vec<u32>| async move {
                Ok(items.into_iter().map(|n| n * 10).collect())
            });
        let results = futures_util::future::join_all((0..100).map(|n| batcher.submit(n))).await;
        for (n, result) in results.into_iter().enumerate() {
            assert_eq!(result.unwrap(), n as u32 * 10);
        }
    }

    #[tokio::test]
    async fn items_waiting_together_run_as_one_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let limits = BatchLimits {
            max_items: 64,
            max_in_flight: 1,
            gather_yields: 0,
        };
        let batcher: Batcher<u32, (), String> = Batcher::spawn(limits, {
            let (sizes, gate) = (sizes.clone(), gate.clone());
            move |items: Vec<u32>| {
                let (sizes, gate) = (sizes.clone(), gate.clone());
                async move {
                    let first_batch = {
                        let mut sizes = sizes.lock().unwrap();
                        sizes.push(items.len());
                        sizes.len() == 1
                    };
                    // Hold the only slot until the test has queued the rest.
                    if first_batch {
                        gate.notified().await;
                    }
                    Ok(vec![(); items.len()])
                }
            }
        });
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(0).await }
        });
        wait_until(|| sizes.lock().unwrap().len() == 1).await;
        let rest: Vec<_> = (1..=10)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(n).await })
            })
            .collect();
        // All ten are queued behind the busy slot before it frees up.
        wait_until(|| batcher.queue.max_capacity() - batcher.queue.capacity() == 10).await;
        gate.notify_one();
        first.await.unwrap().unwrap();
        for task in rest {
            task.await.unwrap().unwrap();
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 10]);
    }

    /// Batch sizes when one caller submits and, in the same instant, wakes
    /// four more that then submit (as one notification wakes many runners):
    /// the worker has been woken first, so it runs before them.
    async fn sizes_when_woken_together(gather_yields: usize) -> Vec<usize> {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let limits = BatchLimits {
            gather_yields,
            ..BatchLimits::default()
        };
        let batcher: Batcher<u32, (), String> = Batcher::spawn(limits, {
            let sizes = sizes.clone();
            move |items: Vec<u32>| {
                sizes.lock().unwrap().push(items.len());
                async move { Ok(vec![(); items.len()]) }
            }
        });
        let (wake, woken) = tokio::sync::watch::channel(());
        let parked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let others: Vec<_> = (1..=4)
            .map(|n| {
                let (batcher, mut woken, parked) = (batcher.clone(), woken.clone(), parked.clone());
                tokio::spawn(async move {
                    parked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    woken.changed().await.unwrap();
                    batcher.submit(n).await
                })
            })
            .collect();
        // The worker and the four wait (a current-thread runtime: each has
        // run up to its first wait once this loop ends).
        while parked.load(std::sync::atomic::Ordering::SeqCst) < 4 {
            tokio::task::yield_now().await;
        }
        let (first, ()) = tokio::join!(batcher.submit(0), async {
            wake.send(()).unwrap();
        });
        first.unwrap();
        for other in others {
            other.await.unwrap().unwrap();
        }
        sizes.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn callers_woken_together_join_one_batch() {
        assert_eq!(
            sizes_when_woken_together(0).await,
            vec![1, 4],
            "without gathering, the worker takes the first item alone"
        );
        assert_eq!(sizes_when_woken_together(2).await, vec![5]);
        assert_eq!(BatchLimits::default().gather_yields, 2);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_item_and_the_worker_goes_on() {
        let batcher: Batcher<u32, u32, String> =
            Batcher::spawn(BatchLimits::default(), |items: Vec<u32>| async move {
                if items.contains(&13) {
                    Err("unlucky".to_owned())
                } else {
                    Ok(items)
                }
            });
        match batcher.submit(13).await {
            Err(BatchError::Failed(message)) => assert_eq!(message, "unlucky"),
            other => panic!("expected the batch to fail, got {other:?}"),
        }
        assert_eq!(batcher.submit(7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_wrong_number_of_outputs_is_an_error_not_a_hang() {
        let batcher: Batcher<u32, u32, String> =
            Batcher::spawn(BatchLimits::default(), |_items: Vec<u32>| async move {
                Ok(Vec::new())
            });
        assert!(matches!(batcher.submit(1).await, Err(BatchError::Stopped)));
    }
}
