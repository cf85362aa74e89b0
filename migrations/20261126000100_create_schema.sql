-- paycron's schema. Every invariant a constraint can hold is held here, not only in code:
-- no card numbers, integer positive amounts, ISO currency shape, one intent per
-- (subscription, period, attempt), at most one success per (subscription, period),
-- an append-only ledger whose postings balance per entry.

CREATE SCHEMA IF NOT EXISTS paycron;

-- Luhn check over every maximal run of 13-19 digits (spaces and dashes ignored): true for
-- anything that could be a primary account number. Used to refuse card numbers wherever an id is stored.
CREATE FUNCTION paycron.looks_like_card_number(v text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  run text;
  d int;
  s int;
  i int;
  n int;
BEGIN
  FOR run IN SELECT (regexp_matches(regexp_replace(v, '[ -]', '', 'g'), '[0-9]{13,}', 'g'))[1] LOOP
    n := length(run);
    IF n BETWEEN 13 AND 19 THEN
      s := 0;
      FOR i IN 0 .. n - 1 LOOP
        d := substr(run, n - i, 1)::int;
        IF i % 2 = 1 THEN
          d := d * 2;
          IF d > 9 THEN d := d - 9; END IF;
        END IF;
        s := s + d;
      END LOOP;
      IF s % 10 = 0 THEN RETURN true; END IF;
    END IF;
  END LOOP;
  RETURN false;
END $$;

CREATE TABLE paycron.customers (
  id            text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 191 AND NOT paycron.looks_like_card_number(id)),
  given_name    text,
  family_name   text,
  email_address text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE paycron.cards (
  id            text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64 AND NOT paycron.looks_like_card_number(id)),
  customer_id   text NOT NULL REFERENCES paycron.customers (id),
  card_brand    text NOT NULL DEFAULT 'OTHER_BRAND' CHECK (card_brand ~ '^[A-Z_]{1,40}$'),
  last_4        text CHECK (last_4 ~ '^[0-9]{4}$'),
  exp_month     int CHECK (exp_month BETWEEN 1 AND 12),
  exp_year      int CHECK (exp_year BETWEEN 1990 AND 2200),
  enabled       boolean NOT NULL DEFAULT true,
  forgotten     boolean NOT NULL DEFAULT false,
  version       bigint,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cards_customer ON paycron.cards (customer_id);

CREATE TABLE paycron.subscriptions (
  id                   uuid PRIMARY KEY,
  customer_id          text NOT NULL REFERENCES paycron.customers (id),
  card_id              text NOT NULL REFERENCES paycron.cards (id),
  amount_minor         bigint NOT NULL CHECK (amount_minor > 0 AND amount_minor <= 1000000000000),
  currency             text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  interval_unit        text NOT NULL CHECK (interval_unit IN ('day', 'week', 'month', 'year')),
  interval_count       int NOT NULL CHECK (interval_count BETWEEN 1 AND 1000),
  anchor               timestamptz NOT NULL,
  time_zone            text NOT NULL DEFAULT 'UTC',
  status               text NOT NULL CHECK (status IN ('trialing', 'active', 'past_due', 'paused', 'unpaid', 'canceled', 'completed')),
  trial_ends_at        timestamptz,
  max_cycles           int CHECK (max_cycles > 0),
  ends_at              timestamptz,
  cancel_at_period_end boolean NOT NULL DEFAULT false,
  -- Billing position: the period to bill next (0-based), its attempt number, and when due.
  next_period          int NOT NULL DEFAULT 0 CHECK (next_period >= 0),
  next_attempt         int NOT NULL DEFAULT 1 CHECK (next_attempt >= 1),
  next_due_at          timestamptz,
  dunning_started_at   timestamptz,
  -- Periods starting before this instant are skipped (set on resume after a pause).
  skip_before          timestamptz,
  external_ref         text UNIQUE,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  canceled_at          timestamptz
);
CREATE INDEX subscriptions_due ON paycron.subscriptions (next_due_at)
  WHERE status IN ('trialing', 'active', 'past_due') AND next_due_at IS NOT NULL;
CREATE INDEX subscriptions_customer ON paycron.subscriptions (customer_id);

-- One row per charge attempt: the durable intent written before any money moves.
CREATE TABLE paycron.charges (
  id                  uuid PRIMARY KEY,
  subscription_id     uuid NOT NULL REFERENCES paycron.subscriptions (id),
  period              int NOT NULL CHECK (period >= 0),
  period_start        timestamptz NOT NULL,
  attempt             int NOT NULL CHECK (attempt >= 1),
  idempotency_key     text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 45),
  customer_id         text NOT NULL,
  card_id             text NOT NULL,
  amount_minor        bigint NOT NULL CHECK (amount_minor > 0 AND amount_minor <= 1000000000000),
  currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  status              text NOT NULL CHECK (status IN ('pending', 'succeeded', 'declined', 'failed')),
  -- The exact CreatePayment body, re-sent byte for byte on recovery, and its SHA-256.
  request_body        text NOT NULL,
  request_fingerprint text NOT NULL,
  lease_owner         uuid,
  locked_until        timestamptz,
  provider_payment_id text UNIQUE,
  decline_code        text,
  decline_category    text,
  sends               int NOT NULL DEFAULT 0,
  created_at          timestamptz NOT NULL DEFAULT now(),
  resolved_at         timestamptz,
  UNIQUE (subscription_id, period, attempt),
  CHECK ((status = 'succeeded') = (provider_payment_id IS NOT NULL) OR status = 'pending')
);
-- Invariant 3 in the database: at most one success, and at most one open intent, per period.
CREATE UNIQUE INDEX charges_one_success_per_period ON paycron.charges (subscription_id, period)
  WHERE status = 'succeeded';
CREATE UNIQUE INDEX charges_one_pending_per_period ON paycron.charges (subscription_id, period)
  WHERE status = 'pending';
CREATE INDEX charges_pending ON paycron.charges (locked_until) WHERE status = 'pending';

-- The ledger: one entry per attempt outcome, never updated or deleted.
CREATE TABLE paycron.ledger_entries (
  id                  bigserial PRIMARY KEY,
  charge_id           uuid NOT NULL UNIQUE REFERENCES paycron.charges (id),
  subscription_id     uuid NOT NULL,
  customer_id         text NOT NULL,
  period_start        timestamptz NOT NULL,
  attempt             int NOT NULL,
  status              text NOT NULL CHECK (status IN ('succeeded', 'declined', 'failed')),
  decline_code        text,
  amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
  currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  provider_payment_id text UNIQUE,
  recorded_at         timestamptz NOT NULL DEFAULT now(),
  CHECK ((status = 'succeeded') = (provider_payment_id IS NOT NULL))
);

-- Double-entry postings for money taken: each entry's postings sum to zero.
CREATE TABLE paycron.ledger_postings (
  id           bigserial PRIMARY KEY,
  entry_id     bigint NOT NULL REFERENCES paycron.ledger_entries (id),
  account      text NOT NULL,
  amount_minor bigint NOT NULL CHECK (amount_minor <> 0),
  currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$')
);
CREATE INDEX ledger_postings_entry ON paycron.ledger_postings (entry_id);

CREATE FUNCTION paycron.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON paycron.ledger_entries
  FOR EACH ROW EXECUTE FUNCTION paycron.refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON paycron.ledger_entries
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.refuse_change();
CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON paycron.ledger_postings
  FOR EACH ROW EXECUTE FUNCTION paycron.refuse_change();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON paycron.ledger_postings
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.refuse_change();

-- Each statement's postings must balance per entry: an entry's postings are written together,
-- in one INSERT. A statement-level check over the transition table costs one query per
-- statement, not one per row.
CREATE FUNCTION paycron.check_postings_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  bad record;
BEGIN
  -- The statement's postings balance per entry and use one currency...
  SELECT entry_id, sum(amount_minor) AS total, count(DISTINCT currency) AS currencies INTO bad
    FROM new_rows GROUP BY entry_id
  HAVING sum(amount_minor) <> 0 OR count(DISTINCT currency) > 1
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'ledger entry % postings do not balance (sum %, % currencies)', bad.entry_id, bad.total, bad.currencies
      USING ERRCODE = 'check_violation';
  END IF;
  -- ...and are all of those entries' postings (none added to an entry written before).
  SELECT n.entry_id, 0 AS total, 0 AS currencies INTO bad
    FROM (SELECT entry_id, count(*) AS k FROM new_rows GROUP BY entry_id) n
   WHERE (SELECT count(*) FROM paycron.ledger_postings p WHERE p.entry_id = n.entry_id) <> n.k
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'ledger entry % already has postings: an entry''s postings are written together', bad.entry_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER ledger_postings_balance AFTER INSERT ON paycron.ledger_postings
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION paycron.check_postings_balance();

-- The events outbox: immutable, ordered by id, announced with NOTIFY.
CREATE TABLE paycron.events (
  id              bigserial PRIMARY KEY,
  type            text NOT NULL,
  subscription_id uuid,
  customer_id     text,
  charge_id       uuid,
  payload         jsonb NOT NULL DEFAULT '{}',
  created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON paycron.events
  FOR EACH ROW EXECUTE FUNCTION paycron.refuse_change();

-- One NOTIFY per statement (payload: the highest new id), not per row: listeners read every
-- event after the last id they saw.
CREATE FUNCTION paycron.notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('paycron_events', (SELECT max(id)::text FROM new_rows));
  RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON paycron.events
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION paycron.notify_event();
