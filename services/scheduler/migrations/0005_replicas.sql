-- Live scheduler replicas, each renewing its row while it runs. Runner
-- leases spread over the live replicas (rendezvous hashing of workflow ids
-- onto replica ids), so several replicas share the work instead of the
-- first one to start taking all of it.
-- A standby replica takes workflows only while no active one is alive.
CREATE TABLE scheduler.replicas (
    id          text PRIMARY KEY,
    standby     boolean NOT NULL DEFAULT false,
    expires_at  timestamptz NOT NULL
);
