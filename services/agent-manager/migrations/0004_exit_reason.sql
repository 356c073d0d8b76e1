-- Why each agent's last process ended (exited, killed, oom-killed, unknown);
-- NULL until one has.
ALTER TABLE agent_manager.agents ADD COLUMN exit_reason text;
