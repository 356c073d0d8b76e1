-- External agents: the SHA-256 of the long-lived credential they connect
-- with, and the instance whose session is (or was last) current, so that a
-- restarted manager tells a reconnect from a new instance.
ALTER TABLE agent_manager.agents
    ADD COLUMN credential_hash bytea,
    ADD COLUMN instance_id text;
