-- What a decision binds to: the digest of the tool and input the person
-- saw (hex SHA-256, shepherd_proto::approval_digest). A request id reused
-- with another tool, input, task or attempt is refused, and the agent acts
-- on an approval only if the answer carries the digest of what it asked.
ALTER TABLE agent_manager.approvals ADD COLUMN digest text NOT NULL DEFAULT '';
