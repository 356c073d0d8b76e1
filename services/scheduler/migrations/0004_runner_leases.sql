-- Which scheduler replica runs each workflow's runner. A replica claims a
-- workflow's tasks only while it holds the workflow's unexpired lease with
-- the current term. Every acquisition bumps the term (the fencing token),
-- so a replica that lost its lease (paused, partitioned, replaced) can no
-- longer claim. A released lease is expired, not deleted: terms only grow.
CREATE TABLE scheduler.runner_leases (
    workflow_id uuid PRIMARY KEY REFERENCES scheduler.workflows (id) ON DELETE CASCADE,
    owner       text NOT NULL,
    term        bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);
