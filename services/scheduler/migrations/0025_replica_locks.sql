-- The session lock each replica holds while its process lives (see
-- `membership`): a live row whose lock is free belongs to a replica that
-- is certainly gone, and any other replica ends the row at once rather
-- than wait for it to expire. NULL: a replica that holds none (an older
-- version), which expires as before.
ALTER TABLE scheduler.replicas ADD COLUMN lock_key bigint;
