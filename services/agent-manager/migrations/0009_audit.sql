-- The audit log: every call that changed (or tried to change) something
-- on this service (the role gate appends; ListAuditEvents reads; entries
-- older than AUDIT_RETENTION are pruned). See shepherd_platform::audit.
CREATE TABLE agent_manager.audit_events (
    id      uuid PRIMARY KEY,
    time    timestamptz NOT NULL DEFAULT now(),
    who     text NOT NULL,
    role    text NOT NULL,
    rpc     text NOT NULL,
    target  text NOT NULL DEFAULT '',
    outcome text NOT NULL,
    peer    text NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_time_idx ON agent_manager.audit_events (time);
CREATE INDEX audit_events_who_idx ON agent_manager.audit_events (who, id);
CREATE INDEX audit_events_target_idx ON agent_manager.audit_events (target, id);
