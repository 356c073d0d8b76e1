-- Budgets: what a workflow (scope 'workflow') or all of an agent's
-- workflows (scope 'agent') may spend per period. One of each per subject.
CREATE TABLE scheduler.budgets (
    scope            text NOT NULL CHECK (scope IN ('workflow', 'agent')),
    subject          uuid NOT NULL,
    -- One of: a sliding window, or a UTC calendar period.
    rolling_ms       bigint NOT NULL DEFAULT 0,
    calendar         text NOT NULL DEFAULT '' CHECK (calendar IN ('', 'day', 'week', 'month')),
    max_tasks        bigint NOT NULL DEFAULT 0,
    max_task_seconds double precision NOT NULL DEFAULT 0,
    max_cost         double precision NOT NULL DEFAULT 0,
    grace_ms         bigint NOT NULL DEFAULT 30000,
    -- What approvals added, while raised_until is ahead.
    raised_tasks        bigint NOT NULL DEFAULT 0,
    raised_task_seconds double precision NOT NULL DEFAULT 0,
    raised_cost         double precision NOT NULL DEFAULT 0,
    raised_until        timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, subject)
);

-- What agents reported of each attempt's usage (totals: a report replayed
-- or repeated changes nothing). `first_at` places it in a period.
CREATE TABLE scheduler.task_usage (
    task_id       text NOT NULL,
    attempt       integer NOT NULL,
    workflow_id   uuid NOT NULL,
    agent_id      uuid NOT NULL,
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cost          double precision NOT NULL DEFAULT 0,
    first_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt)
);
CREATE INDEX task_usage_workflow_idx ON scheduler.task_usage (workflow_id, first_at);
CREATE INDEX task_usage_agent_idx ON scheduler.task_usage (agent_id, first_at);

-- A spent budget, until it is not (the budget pass deletes the row then).
-- `key` names its approval at the agent-manager; `notified` says the
-- agent-manager has it (until then every pass asks again).
CREATE TABLE scheduler.budget_exhaustions (
    scope       text NOT NULL,
    subject     uuid NOT NULL,
    key         text NOT NULL UNIQUE,
    summary     text NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    notified    boolean NOT NULL DEFAULT false,
    decision    text NOT NULL DEFAULT '' CHECK (decision IN ('', 'approved', 'denied')),
    PRIMARY KEY (scope, subject),
    FOREIGN KEY (scope, subject) REFERENCES scheduler.budgets ON DELETE CASCADE
);

-- Budget usage counts the tasks a workflow dispatched in a period.
CREATE INDEX tasks_workflow_dispatched_idx ON scheduler.tasks (workflow_id, dispatched_at)
    WHERE dispatched_at IS NOT NULL;

-- The budget pass finds the held workflows through this (most are not).
CREATE INDEX workflows_held_idx ON scheduler.workflows (id) WHERE cardinality(holds) > 0;
