-- Live restore: a restarted manager adopts an agent process only if the pid
-- still names the process it launched. The pid's start time (clock ticks
-- since boot, /proc/<pid>/stat field 22) tells a reused pid apart.
ALTER TABLE agent_manager.agents ADD COLUMN pid_started_at bigint;
