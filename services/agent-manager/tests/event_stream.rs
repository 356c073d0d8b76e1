//! WatchAgentEvents: resume from a cursor, concurrent watchers, filtering,
//! and resync after pruning.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Harness, is_ready, kind, kinds, reference_agent};
use shepherd_proto::agentmanager::v1::{self as pb, watch_agent_events_response::Kind as Msg};

/// Restarts `agent` and waits until the new generation is ready.
async fn restart_and_wait(h: &mut Harness, agent: &str, generation: u64) -> anyhow::Result<()> {
    let mut events = h.watch(0, agent).await?;
    h.client
        .restart_agent(pb::RestartAgentRequest {
            agent_id: agent.to_owned(),
        })
        .await?;
    events
        .until(|e| is_ready(e) && e.generation == generation)
        .await?;
    Ok(())
}

#[tokio::test]
async fn resumed_watcher_gets_exactly_the_missed_events_and_watchers_agree() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut a = h.watch(0, "").await?;
    let mut b = h.watch(0, "").await?;
    let agent = h
        .create(reference_agent("watched", pb::RestartMode::OnFailure))
        .await?;

    // Watcher A sees the first events, then disconnects.
    let first = a.until(is_ready).await?;
    let cursor = first.last().expect("events").sequence;
    drop(a);

    // Events happen while A is away.
    restart_and_wait(&mut h, &agent.id, 2).await?;
    restart_and_wait(&mut h, &agent.id, 3).await?;

    // B watched all along.
    let b_seen = b.until(|e| is_ready(e) && e.generation == 3).await?;

    // A resumes from its cursor and gets exactly what it missed.
    let mut resumed = h.watch(cursor, "").await?;
    let missed = resumed.until(|e| is_ready(e) && e.generation == 3).await?;
    assert!(
        resumed.until_idle().await?.is_empty(),
        "nothing after the last ready"
    );

    let b_after: Vec<u64> = b_seen
        .iter()
        .map(|e| e.sequence)
        .filter(|seq| *seq > cursor)
        .collect();
    let missed_seqs: Vec<u64> = missed.iter().map(|e| e.sequence).collect();
    assert_eq!(
        missed_seqs, b_after,
        "resumed watcher and live watcher agree"
    );
    let expected: Vec<u64> = (cursor + 1..=cursor + missed.len() as u64).collect();
    assert_eq!(missed_seqs, expected, "no gap, no duplicate, in order");
    assert_eq!(
        first
            .iter()
            .chain(&missed)
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
        b_seen.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        "two concurrent watchers see identical sequences"
    );
    // Payloads agree too, not only sequence numbers.
    assert_eq!(missed, b_seen[first.len()..].to_vec());
    Ok(())
}

#[tokio::test]
async fn agent_filter_and_heartbeat() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut all = h.watch(0, "").await?;
    let one = h
        .create(reference_agent("one", pb::RestartMode::Never))
        .await?;
    all.until(is_ready).await?;
    let two = h
        .create(reference_agent("two", pb::RestartMode::Never))
        .await?;
    all.until(is_ready).await?;

    let mut only_two = h.watch(0, &two.id).await?;
    let seen = only_two.until_idle().await?;
    assert_eq!(common::kinds(&seen), ["created", "started", "ready"]);
    assert!(seen.iter().all(|e| e.agent_id == two.id));
    assert!(seen.iter().all(|e| e.agent_id != one.id));

    // Idle streams prove they are alive with heartbeats carrying the head.
    match only_two.next_message().await? {
        Msg::Heartbeat(beat) => assert_eq!(beat.latest_sequence, 6),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn cursor_behind_pruned_events_gets_resync_required() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    h.create(reference_agent("pruned", pb::RestartMode::Never))
        .await?;
    let seen = events.until(is_ready).await?;
    assert_eq!(seen.len(), 3);

    let pruned = h
        .client
        .prune_events(pb::PruneEventsRequest {
            through_sequence: 2,
        })
        .await?
        .into_inner();
    assert_eq!(pruned.pruned_through_sequence, 2);
    assert_eq!(pruned.deleted, 2);

    // A cursor inside the pruned range: explicit resync, then what remains.
    let mut behind = h.watch(1, "").await?;
    match behind.next_message().await? {
        Msg::ResyncRequired(resync) => {
            assert_eq!(resync.requested_after_sequence, 1);
            assert_eq!(resync.pruned_through_sequence, 2);
        }
        other => panic!("expected ResyncRequired, got {other:?}"),
    }
    let rest = behind.next().await?;
    assert_eq!((rest.sequence, kind(&rest)), (3, "ready"));

    // A cursor at the pruned boundary lost nothing: no resync.
    let mut exact = h.watch(2, "").await?;
    let next = exact.next().await?;
    assert_eq!(next.sequence, 3);
    Ok(())
}

#[tokio::test]
async fn many_watchers_and_a_stalled_one_do_not_block_the_log() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    // A watcher that never reads: its buffers fill, it must not hold
    // anyone back.
    let _stalled = h.watch(0, "").await?;
    let mut watchers = Vec::new();
    for _ in 0..8 {
        watchers.push(h.watch(0, "").await?);
    }
    let agent = h
        .create(reference_agent("busy", pb::RestartMode::OnFailure))
        .await?;
    for generation in 2..=4 {
        restart_and_wait(&mut h, &agent.id, generation).await?;
    }
    let mut sequences = Vec::new();
    for watcher in &mut watchers {
        let seen = watcher.until(|e| is_ready(e) && e.generation == 4).await?;
        sequences.push(seen.iter().map(|e| e.sequence).collect::<Vec<_>>());
    }
    assert!(sequences.windows(2).all(|w| w[0] == w[1]));
    Ok(())
}

/// Two managers on one database: each one's watchers see every event,
/// whichever manager appended it, in the one sequence, live.
#[tokio::test]
async fn watchers_on_every_manager_see_the_same_sequence() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut second = common::start_manager(&h.db, &h.log_dir, "node-b").await?;
    let mut other = pb::agent_manager_client::AgentManagerClient::new(
        shepherd_testkit::channel(&second.url()).await?,
    );
    let mut on_first = h.watch(0, "").await?;
    let mut on_second = common::Events {
        stream: other
            .watch_agent_events(pb::WatchAgentEventsRequest::default())
            .await?
            .into_inner(),
    };

    // Appended by the first manager (an agent it launches), then by the
    // second (one it creates stopped), then by the first again.
    let launched = h
        .create(reference_agent("on-first", pb::RestartMode::OnFailure))
        .await?;
    let mut stopped = reference_agent("on-second", pb::RestartMode::OnFailure);
    stopped.desired_state = pb::DesiredState::Stopped as i32;
    let created = other
        .create_agent(pb::CreateAgentRequest {
            agent: Some(stopped),
        })
        .await?
        .into_inner();
    h.client
        .stop_agent(pb::StopAgentRequest {
            agent_id: launched.id.clone(),
        })
        .await?;

    let last = |e: &pb::AgentEvent| e.agent_id == launched.id && kind(e) == "stopped";
    // Heartbeats keep a stream alive: bound the whole wait.
    let first_view = tokio::time::timeout(common::WAIT, on_first.until(last)).await??;
    let second_view = tokio::time::timeout(common::WAIT, on_second.until(last)).await??;
    let seen = |events: &[pb::AgentEvent]| -> Vec<(u64, String, &'static str)> {
        events
            .iter()
            .map(|e| (e.sequence, e.agent_id.clone(), kind(e)))
            .collect()
    };
    assert_eq!(
        seen(&first_view),
        seen(&second_view),
        "one sequence on both"
    );
    let sequences: Vec<u64> = first_view.iter().map(|e| e.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free: {sequences:?}"
    );
    assert!(
        first_view
            .iter()
            .any(|e| e.agent_id == created.id && kind(e) == "created"),
        "the first manager's watcher saw the second's append"
    );
    second.kill().await?;
    Ok(())
}

/// A watcher that names kinds gets only events of those kinds, from the
/// log (a catch-up from 0) and live alike, in sequence order; resuming
/// after the last one it got is exact; an unknown kind is refused.
#[tokio::test]
async fn a_watcher_gets_only_the_kinds_it_names() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let watch = |h: &Harness, after: u64, kinds: &[&str]| {
        let mut client = h.client.clone();
        let kinds = kinds.iter().map(|kind| (*kind).to_owned()).collect();
        async move {
            anyhow::Ok(common::Events {
                stream: client
                    .watch_agent_events(pb::WatchAgentEventsRequest {
                        after_sequence: after,
                        kinds,
                        ..Default::default()
                    })
                    .await?
                    .into_inner(),
            })
        }
    };
    let mut live = watch(&h, 0, &["ready", "restarted", "ready"]).await?;
    let agent = h
        .create(reference_agent("filtered", pb::RestartMode::OnFailure))
        .await?;
    let mut seen = live.until(is_ready).await?;
    restart_and_wait(&mut h, &agent.id, 2).await?;

    // Live: the first ready, then the restart's two, and nothing else.
    while seen.len() < 3 {
        seen.push(live.next().await?);
    }
    assert!(
        live.until_idle().await?.is_empty(),
        "nothing else: {seen:?}"
    );
    // From the log: the same events.
    let mut caught_up = watch(&h, 0, &["restarted", "ready"]).await?;
    let from_log = caught_up.until_idle().await?;
    let kinds_and_seqs = |events: &[pb::AgentEvent]| {
        events
            .iter()
            .map(|e| (kind(e), e.sequence))
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds_and_seqs(&seen), kinds_and_seqs(&from_log));
    assert_eq!(kinds(&from_log), ["ready", "restarted", "ready"]);
    assert!(
        from_log.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "in sequence order: {from_log:?}"
    );
    // Resuming after the first one gets exactly the rest.
    let mut resumed = watch(&h, from_log[0].sequence, &["ready", "restarted"]).await?;
    assert_eq!(
        kinds_and_seqs(&resumed.until_idle().await?),
        kinds_and_seqs(&from_log[1..])
    );

    let refused = watch(&h, 0, &["ready", "exploded"]).await;
    let status = refused
        .err()
        .and_then(|err| err.downcast::<tonic::Status>().ok())
        .expect("an unknown kind is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("exploded"),
        "{}",
        status.message()
    );
    Ok(())
}
