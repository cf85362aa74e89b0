-- sync-cards at scale: Square's ListCards without a customer filter, walked from both ends at
-- once (oldest first and newest first), resumable where it stopped.
--
-- One row per sync kind holds the run in progress: its id, when it began, and each listing's
-- cursor, saved in the same transaction as the page it follows, so a run stopped anywhere
-- resumes after the last page it filed. A run that has filed no page for an hour is started
-- over (Square's cursors are not meant to live long).
CREATE TABLE paycron.sync_runs (
  name            text PRIMARY KEY CHECK (name IN ('cards')),
  run_id          uuid NOT NULL,
  started_at      timestamptz NOT NULL,
  touched_at      timestamptz NOT NULL,
  finished_at     timestamptz,
  customers_cursor text,
  customers_done  boolean NOT NULL DEFAULT false,
  oldest_cursor   text,
  oldest_done     boolean NOT NULL DEFAULT false,
  newest_cursor   text,
  newest_done     boolean NOT NULL DEFAULT false
);

-- Which run last saw each card in Square's listing, and from which end ('oldest' first or
-- 'newest' first): the two listings stop where they meet, and a card no run saw is gone at Square.
ALTER TABLE paycron.cards
  ADD COLUMN listed_run uuid,
  ADD COLUMN listed_from text CHECK (listed_from IN ('oldest', 'newest'));
