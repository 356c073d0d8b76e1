-- Approvals: an agent asks before it uses a tool on its workflow's `ask`
-- list; someone decides. `request_id` is the agent's idempotency key (it
-- sends a request again until answered); `generation` is the agent's when
-- it asked (for the events about it).
CREATE TABLE agent_manager.approvals (
    id          uuid PRIMARY KEY,
    agent_id    uuid NOT NULL,
    request_id  text NOT NULL,
    generation  bigint NOT NULL,
    task_id     text NOT NULL,
    attempt     integer NOT NULL,
    workflow_id text NOT NULL DEFAULT '',
    tool        text NOT NULL,
    input       text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT '',
    state       text NOT NULL
                CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'withdrawn')),
    comment     text NOT NULL DEFAULT '',
    decided_by  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    decided_at  timestamptz,
    UNIQUE (agent_id, request_id)
);
-- The periodic pass over pending approvals reads only these.
CREATE INDEX approvals_pending_idx ON agent_manager.approvals (expires_at)
    WHERE state = 'pending';
CREATE INDEX approvals_workflow_idx ON agent_manager.approvals (workflow_id, id);
