-- Workflows: which agent they feed, how tasks are made, and whether they run.
CREATE TABLE scheduler.workflows (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    agent_id         uuid NOT NULL,
    enabled          boolean NOT NULL,
    trigger          jsonb NOT NULL,
    prompt_template  text NOT NULL,
    max_concurrency  integer NOT NULL CHECK (max_concurrency > 0),
    max_attempts     integer NOT NULL CHECK (max_attempts > 0),
    disabled_reason  text NOT NULL DEFAULT '',
    -- Next schedule tick (interval, cron, delay); NULL when none is due.
    next_fire_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- Recovery lists an agent's enabled workflows: an index, never a scan.
CREATE INDEX workflows_agent_enabled_idx ON scheduler.workflows (agent_id, enabled, id);
CREATE INDEX workflows_next_fire_idx ON scheduler.workflows (next_fire_at) WHERE enabled AND next_fire_at IS NOT NULL;

-- Tasks: `id` is "<workflow_id>:<idempotency_key>", the id the agent sees.
CREATE TABLE scheduler.tasks (
    id               text PRIMARY KEY,
    seq              bigserial NOT NULL,
    workflow_id      uuid NOT NULL REFERENCES scheduler.workflows (id) ON DELETE CASCADE,
    idempotency_key  text NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'dispatched', 'succeeded', 'failed')),
    fields           jsonb NOT NULL,
    prompt           text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    output           text NOT NULL DEFAULT '',
    last_error       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, idempotency_key)
);
CREATE INDEX tasks_pending_idx ON scheduler.tasks (workflow_id, seq) WHERE state = 'pending';
CREATE INDEX tasks_dispatched_idx ON scheduler.tasks (workflow_id) WHERE state = 'dispatched';
CREATE INDEX tasks_workflow_seq_idx ON scheduler.tasks (workflow_id, seq);

-- How far the agent-manager's event stream has been handled.
CREATE TABLE scheduler.event_cursor (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq  bigint NOT NULL
);
INSERT INTO scheduler.event_cursor (last_seq) VALUES (0);
