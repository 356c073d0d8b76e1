-- Agents: spec, what the user asked for (desired_state) and what was observed
-- (status, pid, generation). Only the agent's supervisor writes the observed
-- columns.
CREATE TABLE agent_manager.agents (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    spec               jsonb NOT NULL,
    labels             jsonb NOT NULL DEFAULT '{}',
    desired_state      text NOT NULL CHECK (desired_state IN ('running', 'stopped')),
    status             text NOT NULL,
    status_message     text NOT NULL DEFAULT '',
    generation         bigint NOT NULL DEFAULT 0,
    pid                integer,
    session_token_hash bytea,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agents_labels_idx ON agent_manager.agents USING gin (labels);
CREATE INDEX agents_status_idx ON agent_manager.agents (status);

-- The append-only event log. `seq` is assigned by the single writer from
-- event_log_state inside the inserting transaction, so sequence order equals
-- commit order. `payload` is the encoded shepherd.agentmanager.v1.AgentEvent.
CREATE TABLE agent_manager.events (
    seq        bigint PRIMARY KEY,
    agent_id   uuid NOT NULL,
    kind       text NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_agent_seq_idx ON agent_manager.events (agent_id, seq);
CREATE INDEX events_created_at_idx ON agent_manager.events (created_at);

-- One row: the last assigned sequence and how far the log was pruned.
CREATE TABLE agent_manager.event_log_state (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq       bigint NOT NULL,
    pruned_through bigint NOT NULL
);
INSERT INTO agent_manager.event_log_state (last_seq, pruned_through) VALUES (0, 0);

-- Tasks delivered to agents. task_id is the caller's idempotency key.
CREATE TABLE agent_manager.tasks (
    task_id    text PRIMARY KEY,
    agent_id   uuid NOT NULL,
    session_id uuid NOT NULL,
    generation bigint NOT NULL,
    state      text NOT NULL CHECK (state IN ('delivered', 'accepted', 'completed', 'lost')),
    attempt    integer NOT NULL DEFAULT 1,
    outcome    text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_in_flight_idx ON agent_manager.tasks (session_id)
    WHERE state IN ('delivered', 'accepted');
