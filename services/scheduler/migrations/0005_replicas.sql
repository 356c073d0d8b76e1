-- Live scheduler replicas, each renewing its row while it runs. Runner
-- leases spread over the live replicas (rendezvous hashing of workflow ids
-- onto replica ids), so several replicas share the work instead of the
-- first one to start taking all of it.
CREATE TABLE scheduler.replicas (
    id          text PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
