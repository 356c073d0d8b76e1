-- Holds: reasons a workflow's tasks are not dispatched now, besides its own
-- pause ('agent-paused': its agent is paused). Claims skip a workflow with
-- any hold by reading the row they read anyway, so a hold costs a claim
-- nothing; the owners of each reason keep the array in step (the triggers
-- below for agent pauses), and a hold that goes wakes the workflow's runner.
ALTER TABLE scheduler.workflows ADD COLUMN holds text[] NOT NULL DEFAULT '{}';

-- A paused agent: no task of any of its workflows is dispatched (its
-- process keeps running; tasks already dispatched run on).
CREATE TABLE scheduler.agent_pauses (
    agent_id   uuid PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text NOT NULL,
    reason     text NOT NULL DEFAULT ''
);

CREATE FUNCTION scheduler.hold_paused_agents_workflows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE scheduler.workflows
        SET holds = array_append(array_remove(holds, 'agent-paused'), 'agent-paused')
        WHERE agent_id = NEW.agent_id;
    ELSE
        UPDATE scheduler.workflows SET holds = array_remove(holds, 'agent-paused')
        WHERE agent_id = OLD.agent_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER agent_pauses_hold AFTER INSERT OR DELETE ON scheduler.agent_pauses
    FOR EACH ROW EXECUTE FUNCTION scheduler.hold_paused_agents_workflows();

-- A workflow made for (or moved to) a paused agent is held from the start.
CREATE FUNCTION scheduler.hold_if_agent_paused() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.holds := array_remove(NEW.holds, 'agent-paused');
    IF EXISTS (SELECT FROM scheduler.agent_pauses WHERE agent_id = NEW.agent_id) THEN
        NEW.holds := array_append(NEW.holds, 'agent-paused');
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER workflows_hold_if_agent_paused BEFORE INSERT OR UPDATE OF agent_id
    ON scheduler.workflows
    FOR EACH ROW EXECUTE FUNCTION scheduler.hold_if_agent_paused();

-- A hold gone: its runner claims again.
CREATE TRIGGER workflows_notify_unheld AFTER UPDATE OF holds ON scheduler.workflows
    FOR EACH ROW WHEN (cardinality(NEW.holds) < cardinality(OLD.holds))
    EXECUTE FUNCTION scheduler.notify_workflow_changes();
