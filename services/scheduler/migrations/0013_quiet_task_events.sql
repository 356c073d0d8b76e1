-- A NOTIFY per task-changing statement made every claim take PostgreSQL's
-- notification queue lock at commit (claims notified nobody before): 27%
-- of the no-op throughput at max concurrency 8. Watchers now look every
-- 250 ms while they watch, and sooner on a work notification; the
-- database does nothing extra for a change nobody watches.
DROP TRIGGER task_events_notify ON scheduler.task_events;
DROP FUNCTION scheduler.notify_task_events();
