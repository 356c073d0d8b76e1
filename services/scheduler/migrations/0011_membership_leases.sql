-- Leases live as long as their holder's membership row. Renewing a lease
-- per workflow cost one row update per workflow every few seconds (most of
-- an idle database's work); now a replica renews its one membership row and
-- with it every lease it holds. `expires_at` is 'infinity' while a lease is
-- held and is set to now() when it is released.
CREATE FUNCTION scheduler.lease_live(lease_owner text, lease_expires_at timestamptz)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT lease_expires_at > now() AND EXISTS (
        SELECT 1 FROM scheduler.replicas r
        WHERE r.id = lease_owner AND r.expires_at > now())
$$;

UPDATE scheduler.runner_leases SET expires_at = 'infinity' WHERE expires_at > now();

-- A released lease wakes the other replicas' runners of the workflow
-- (they stand by without polling).
CREATE FUNCTION scheduler.notify_lease_released() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('shepherd_lease', NEW.workflow_id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER runner_leases_notify_release AFTER UPDATE ON scheduler.runner_leases
    FOR EACH ROW
    WHEN (OLD.expires_at = 'infinity' AND NEW.expires_at <> 'infinity')
    EXECUTE FUNCTION scheduler.notify_lease_released();
