//! Fair shares of concurrency keys: which claimable tasks of keyed
//! workflows may start now. A pure function of what the claim read under
//! the keys' row locks (`store::keyed_claims`), kept apart from the SQL so
//! that every rule is tested here.
//!
//! The rules:
//! * A task starts only if every key its workflow names has a free slot
//!   (limit minus the tasks holding it), and its workflow has room (its
//!   own max_concurrency).
//! * Slots go one at a time to the best contender: the highest priority
//!   first; among equals the workflow served least recently (never served
//!   first); then the oldest task. A workflow given a slot goes to the back
//!   (round robin), so a busy workflow that claims again the moment its
//!   task ends cannot starve the others.
//! * Contenders are the workflows claiming now and the workflows waiting
//!   elsewhere (another replica's runners, or runners not yet woken): a
//!   slot a waiting workflow wins is left free for it (and it is woken),
//!   rather than taken by whoever happened to claim first.

/// A contender for slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contender<T> {
    /// Indices into the keys' free slots.
    pub keys: Vec<usize>,
    /// When the workflow was last given a slot (ordered: smaller is longer
    /// ago); None: never.
    pub served: Option<i64>,
    /// How many more tasks its own max_concurrency lets run.
    pub room: u32,
    /// Its claimable tasks, best first (priority, then age): for a
    /// contender claiming now, those it may take; for one waiting
    /// elsewhere, its next task alone.
    pub tasks: Vec<Candidate<T>>,
    /// Claiming now (else waiting elsewhere: what it wins is reserved).
    pub here: bool,
}

/// A claimable task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate<T> {
    pub priority: i32,
    /// Creation order.
    pub seq: i64,
    pub task: T,
}

/// What `share` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shares<T> {
    /// Tasks to start, per contender claiming now.
    pub granted: Vec<(usize, T)>,
    /// Contenders waiting elsewhere that won a slot (kept for them).
    pub reserved: Vec<usize>,
    /// Contenders claiming now with a task they could not start for want
    /// of a key's slot: they wait for one.
    pub waiting: Vec<usize>,
}

/// Shares the `free` slots of each key among `contenders`.
pub(crate) fn share<T: Clone>(free: &[u32], contenders: &[Contender<T>]) -> Shares<T> {
    let mut free = free.to_vec();
    // Per contender: tasks taken so far, and its place in the round robin.
    let mut taken = vec![0usize; contenders.len()];
    let mut served: Vec<(Option<i64>, u64)> = contenders.iter().map(|c| (c.served, 0)).collect();
    let mut round = 0u64;
    let mut shares = Shares {
        granted: Vec::new(),
        reserved: Vec::new(),
        waiting: Vec::new(),
    };
    loop {
        let fits = |i: &usize| {
            let contender = &contenders[*i];
            taken[*i] < contender.tasks.len()
                && (taken[*i] as u32) < contender.room
                && (contender.here || taken[*i] == 0)
                && contender.keys.iter().all(|key| free[*key] > 0)
        };
        let best = (0..contenders.len()).filter(fits).min_by(|a, b| {
            let (ta, tb) = (
                &contenders[*a].tasks[taken[*a]],
                &contenders[*b].tasks[taken[*b]],
            );
            tb.priority
                .cmp(&ta.priority)
                .then(served_order(served[*a]).cmp(&served_order(served[*b])))
                .then(ta.seq.cmp(&tb.seq))
        });
        let Some(i) = best else { break };
        let contender = &contenders[i];
        for key in &contender.keys {
            free[*key] -= 1;
        }
        if contender.here {
            shares
                .granted
                .push((i, contender.tasks[taken[i]].task.clone()));
        } else {
            shares.reserved.push(i);
        }
        taken[i] += 1;
        round += 1;
        // To the back of the round robin: served after everyone else.
        served[i] = (Some(i64::MAX), round);
    }
    shares.waiting = (0..contenders.len())
        .filter(|i| {
            let contender = &contenders[*i];
            contender.here
                && taken[*i] < contender.tasks.len()
                && (taken[*i] as u32) < contender.room
        })
        .collect();
    shares
}

/// Never served sorts first, then longest ago, then (within this call)
/// in the order slots were given.
fn served_order(served: (Option<i64>, u64)) -> (bool, i64, u64) {
    (served.0.is_some(), served.0.unwrap_or(i64::MIN), served.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here(
        keys: &[usize],
        served: Option<i64>,
        room: u32,
        tasks: &[(i32, i64)],
    ) -> Contender<i64> {
        Contender {
            keys: keys.to_vec(),
            served,
            room,
            tasks: tasks
                .iter()
                .map(|(priority, seq)| Candidate {
                    priority: *priority,
                    seq: *seq,
                    task: *seq,
                })
                .collect(),
            here: true,
        }
    }

    fn elsewhere(keys: &[usize], served: Option<i64>, head: (i32, i64)) -> Contender<i64> {
        Contender {
            here: false,
            ..here(keys, served, 1, &[head])
        }
    }

    #[test]
    fn never_more_than_the_free_slots_of_a_key() {
        let contenders = [here(&[0], None, 10, &[(0, 1), (0, 2), (0, 3), (0, 4)])];
        let shares = share(&[2], &contenders);
        assert_eq!(shares.granted, [(0, 1), (0, 2)]);
        assert_eq!(shares.waiting, [0]);
        let shares = share(&[0], &contenders);
        assert!(shares.granted.is_empty());
        assert_eq!(shares.waiting, [0]);
    }

    #[test]
    fn a_task_needs_a_slot_of_every_key_its_workflow_names() {
        let contenders = [
            here(&[0, 1], None, 5, &[(0, 1), (0, 2)]),
            here(&[1], Some(10), 5, &[(0, 3)]),
        ];
        // Key 0 has one slot, key 1 three: the two-key workflow gets one.
        let shares = share(&[1, 3], &contenders);
        assert_eq!(shares.granted, [(0, 1), (1, 3)]);
        assert_eq!(shares.waiting, [0]);
    }

    #[test]
    fn the_workflow_served_least_recently_goes_first_and_slots_go_round_robin() {
        let contenders = [
            here(&[0], Some(20), 5, &[(0, 1), (0, 2), (0, 3)]),
            here(&[0], Some(10), 5, &[(0, 4), (0, 5), (0, 6)]),
            here(&[0], None, 5, &[(0, 7), (0, 8), (0, 9)]),
        ];
        let shares = share(&[5], &contenders);
        // Never served, then served at 10, then at 20; then round again.
        assert_eq!(shares.granted, [(2, 7), (1, 4), (0, 1), (2, 8), (1, 5)]);
        assert_eq!(shares.waiting, [0, 1, 2]);
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let contenders = [
            here(&[0], None, 5, &[(0, 1), (0, 2)]),
            here(&[0], Some(99), 5, &[(5, 3), (0, 4)]),
        ];
        let shares = share(&[2], &contenders);
        assert_eq!(shares.granted, [(1, 3), (0, 1)], "priority beats fairness");
    }

    #[test]
    fn a_workflow_waiting_elsewhere_keeps_the_slot_it_wins() {
        let contenders = [
            here(&[0], Some(50), 5, &[(0, 1), (0, 2)]),
            elsewhere(&[0], Some(10), (0, 9)),
        ];
        let shares = share(&[1], &contenders);
        assert!(shares.granted.is_empty(), "the slot is kept for the waiter");
        assert_eq!(shares.reserved, [1]);
        assert_eq!(shares.waiting, [0]);
        // A waiter served more recently than the claimer does not win.
        let contenders = [
            here(&[0], Some(10), 5, &[(0, 1)]),
            elsewhere(&[0], Some(50), (0, 9)),
        ];
        let shares = share(&[1], &contenders);
        assert_eq!(shares.granted, [(0, 1)]);
        assert!(shares.reserved.is_empty());
    }

    #[test]
    fn a_waiter_elsewhere_wins_at_most_one_slot() {
        let contenders = [
            elsewhere(&[0], None, (0, 9)),
            here(&[0], Some(5), 5, &[(0, 1), (0, 2)]),
        ];
        let shares = share(&[3], &contenders);
        assert_eq!(shares.reserved, [0]);
        assert_eq!(shares.granted, [(1, 1), (1, 2)]);
        assert!(shares.waiting.is_empty());
    }

    #[test]
    fn a_workflow_out_of_room_neither_takes_nor_waits() {
        let contenders = [here(&[0], None, 1, &[(0, 1), (0, 2)])];
        let shares = share(&[5], &contenders);
        assert_eq!(shares.granted, [(0, 1)]);
        assert!(
            shares.waiting.is_empty(),
            "its own limit holds it, not the key"
        );
    }
}
