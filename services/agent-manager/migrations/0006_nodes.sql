-- Several managers on one database. Each is a node: a name, the URL its
-- peers forward calls to, and a lease it renews. `term` grows every time a
-- manager joins under the name, and every write a node makes about its
-- agents checks it, so a stale process holding an old term is fenced out.
CREATE TABLE agent_manager.nodes (
    name          text PRIMARY KEY,
    term          bigint NOT NULL,
    url           text NOT NULL,
    lease_expires timestamptz NOT NULL,
    joined_at     timestamptz NOT NULL DEFAULT now()
);

-- The node that supervises an agent now: a process agent's launching node,
-- an external agent's session node (NULL until it first connects).
ALTER TABLE agent_manager.agents ADD COLUMN node text;
CREATE INDEX agents_node_idx ON agent_manager.agents (node);
