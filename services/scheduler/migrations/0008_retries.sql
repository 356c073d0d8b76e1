-- Retries: one policy per workflow (backoff, jitter, which outcomes are
-- retried), each task's attempt history, and dead letters.
ALTER TABLE scheduler.workflows ADD COLUMN retry jsonb NOT NULL DEFAULT '{}';
ALTER TABLE scheduler.tasks
    ADD COLUMN not_before timestamptz,
    ADD COLUMN dispatched_at timestamptz,
    ADD COLUMN dead_letter boolean NOT NULL DEFAULT false;
CREATE INDEX tasks_dead_letter_idx ON scheduler.tasks (workflow_id, seq) WHERE dead_letter;

-- One row per finished attempt of a task.
CREATE TABLE scheduler.task_attempts (
    task_id    text NOT NULL REFERENCES scheduler.tasks (id) ON DELETE CASCADE,
    attempt    integer NOT NULL,
    outcome    text NOT NULL,
    error      text NOT NULL DEFAULT '',
    started_at timestamptz,
    ended_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt)
);

-- Whether a workflow's retry policy retries an attempt that ended so.
-- Lost attempts always are; failed ones when opted in; timed-out ones
-- unless opted out.
CREATE FUNCTION scheduler.retries(policy jsonb, outcome text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE outcome
        WHEN 'lost' THEN true
        WHEN 'failed' THEN coalesce((policy->>'retry_failed')::boolean, false)
        WHEN 'timed_out' THEN coalesce((policy->>'retry_timed_out')::boolean, true)
        ELSE false END
$$;

-- The delay before the retry that follows attempt number `attempts`:
-- initial * 2^(attempts - 1), capped at max, scaled by a random factor in
-- [1 - jitter, 1 + jitter].
CREATE FUNCTION scheduler.retry_delay(policy jsonb, attempts integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs =>
        least(coalesce((policy->>'initial_backoff_ms')::float8, 1000)
                  * power(2::float8, greatest(attempts - 1, 0)),
              coalesce((policy->>'max_backoff_ms')::float8, 60000))
        * (1 + coalesce((policy->>'jitter')::float8, 0.2) * (2 * random() - 1))
        / 1000.0)
$$;
