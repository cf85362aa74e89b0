-- The last run of each task, across all replicas: when it ran, whether it succeeded, its
-- summary (the counts the run's log line carries) and, when it failed, why. `paycron status`
-- reads it; the daemon and run-once write it after every run that did something or failed.
CREATE TABLE paycron.task_results (
  task         text PRIMARY KEY,
  job          text NOT NULL,
  owner        uuid NOT NULL,
  started_at   timestamptz NOT NULL,
  finished_at  timestamptz NOT NULL,
  ok           boolean NOT NULL,
  error        text,
  summary      jsonb NOT NULL DEFAULT '{}'::jsonb,
  runs         bigint NOT NULL DEFAULT 1,
  failures     bigint NOT NULL DEFAULT 0,
  last_ok_at   timestamptz,
  CHECK (ok = (error IS NULL))
);
