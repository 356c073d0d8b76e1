-- A key may also cap how many tasks holding it start per period: a token
-- bucket stored with the key, so it holds across scheduler restarts and
-- replicas. It holds at most `rate_limit` tokens and gains `rate_limit`
-- per `rate_period_ms`; it is refilled (by the time since `refilled_at`)
-- and drawn from only by the claims that hold the key's row lock.
ALTER TABLE scheduler.concurrency_keys
    ADD COLUMN rate_limit integer CHECK (rate_limit BETWEEN 1 AND 100000),
    ADD COLUMN rate_period_ms bigint CHECK (rate_period_ms BETWEEN 1000 AND 86400000),
    ADD COLUMN tokens double precision NOT NULL DEFAULT 0,
    ADD COLUMN refilled_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT concurrency_keys_rate_whole
        CHECK ((rate_limit IS NULL) = (rate_period_ms IS NULL));
