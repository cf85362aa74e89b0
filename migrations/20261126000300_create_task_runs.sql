-- One row per singleton task per tick, across all replicas: the first replica to insert the
-- row runs the task for that tick; the others skip it.
CREATE TABLE paycron.task_runs (
  task        text NOT NULL,
  tick        timestamptz NOT NULL,
  owner       uuid NOT NULL,
  started_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (task, tick)
);
