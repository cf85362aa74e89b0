-- Money going back: refunds paycron asks Square for, and disputes (chargebacks) Square reports.
--
-- A refund follows the charge protocol: the row (its key and its exact RefundPayment body) is
-- written before any call, leased while a worker sends it, re-sent byte for byte after a crash,
-- and settled exactly once. What may be refunded is held here, not only in code: the refunds of
-- a charge that are not rejected or failed never add up to more than the charge, under any
-- concurrency (the insert locks the charge row first).

CREATE TABLE paycron.refunds (
  id                  uuid PRIMARY KEY,
  charge_id           uuid NOT NULL REFERENCES paycron.charges (id),
  provider_payment_id text NOT NULL,
  idempotency_key     text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 45),
  amount_minor        bigint NOT NULL CHECK (amount_minor > 0 AND amount_minor <= 1000000000000),
  currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  reason              text CHECK (length(reason) BETWEEN 1 AND 192),
  -- pending: written, being sent, or accepted by Square and not yet settled (provider_refund_id
  -- set); completed: the money went back; rejected / failed: it did not (Square's words).
  status              text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'completed', 'rejected', 'failed')),
  provider_refund_id  text UNIQUE CHECK (length(provider_refund_id) BETWEEN 1 AND 255),
  failure_code        text,
  request_body        text NOT NULL,
  lease_owner         uuid,
  locked_until        timestamptz,
  sends               int NOT NULL DEFAULT 0 CHECK (sends >= 0),
  created_at          timestamptz NOT NULL DEFAULT now(),
  resolved_at         timestamptz,
  CHECK ((status = 'pending') = (resolved_at IS NULL))
);
CREATE INDEX refunds_charge ON paycron.refunds (charge_id);
CREATE INDEX refunds_open ON paycron.refunds (locked_until NULLS FIRST) WHERE status = 'pending';

-- The cap, enforced where no caller can get around it. The charge row is locked first, so two
-- refunds of one charge are decided one after the other; each statement of this function sees
-- what committed before it.
CREATE FUNCTION paycron.check_refund() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  c paycron.charges;
  taken bigint;
BEGIN
  SELECT * INTO c FROM paycron.charges WHERE id = NEW.charge_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'charge % does not exist', NEW.charge_id USING ERRCODE = 'no_data_found';
  END IF;
  IF c.status <> 'succeeded' THEN
    RAISE EXCEPTION 'charge % is %, not succeeded: only money taken can be refunded', c.id, c.status
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.currency <> c.currency THEN
    RAISE EXCEPTION 'refund currency % differs from charge %''s %', NEW.currency, c.id, c.currency
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.provider_payment_id <> c.provider_payment_id THEN
    RAISE EXCEPTION 'refund names payment %, charge % was paid by %', NEW.provider_payment_id, c.id,
      c.provider_payment_id USING ERRCODE = 'check_violation';
  END IF;
  SELECT coalesce(sum(amount_minor), 0) INTO taken FROM paycron.refunds
   WHERE charge_id = c.id AND status IN ('pending', 'completed');
  IF taken + NEW.amount_minor > c.amount_minor THEN
    RAISE EXCEPTION 'refund of % % is more than the % % left of charge % (% % charged, % refunded or in progress)',
      NEW.amount_minor, NEW.currency, c.amount_minor - taken, c.currency, c.id, c.amount_minor, c.currency, taken
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refunds_cap BEFORE INSERT ON paycron.refunds
  FOR EACH ROW EXECUTE FUNCTION paycron.check_refund();

-- What a refund is never changes; only its progress does, forward only.
CREATE FUNCTION paycron.guard_refund() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (NEW.id, NEW.charge_id, NEW.provider_payment_id, NEW.idempotency_key, NEW.amount_minor,
      NEW.currency, NEW.reason, NEW.request_body, NEW.created_at)
     IS DISTINCT FROM
     (OLD.id, OLD.charge_id, OLD.provider_payment_id, OLD.idempotency_key, OLD.amount_minor,
      OLD.currency, OLD.reason, OLD.request_body, OLD.created_at) THEN
    RAISE EXCEPTION 'refund %: what was asked of Square cannot change', OLD.id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF OLD.status <> 'pending' AND NEW.status IS DISTINCT FROM OLD.status THEN
    RAISE EXCEPTION 'refund % is % already', OLD.id, OLD.status USING ERRCODE = 'check_violation';
  END IF;
  IF OLD.provider_refund_id IS NOT NULL AND NEW.provider_refund_id IS DISTINCT FROM OLD.provider_refund_id THEN
    RAISE EXCEPTION 'refund % is Square''s % already', OLD.id, OLD.provider_refund_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refunds_guard BEFORE UPDATE ON paycron.refunds
  FOR EACH ROW EXECUTE FUNCTION paycron.guard_refund();
CREATE TRIGGER refunds_append_only BEFORE DELETE ON paycron.refunds
  FOR EACH ROW EXECUTE FUNCTION paycron.refuse_change();
CREATE TRIGGER refunds_no_truncate BEFORE TRUNCATE ON paycron.refunds
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.refuse_change();

-- Disputes Square reports (dispute.created, dispute.state.updated), one row per dispute, moved
-- forward by Square's version.
CREATE TABLE paycron.disputes (
  id                  text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 40),
  charge_id           uuid REFERENCES paycron.charges (id),
  provider_payment_id text NOT NULL,
  state               text NOT NULL CHECK (state ~ '^[A-Z_]{1,40}$'),
  reason              text,
  amount_minor        bigint NOT NULL CHECK (amount_minor >= 0),
  currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  due_at              timestamptz,
  version             bigint,
  opened_at           timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX disputes_open ON paycron.disputes (due_at)
  WHERE state NOT IN ('WON', 'LOST', 'ACCEPTED', 'INQUIRY_CLOSED');
CREATE TRIGGER disputes_append_only BEFORE DELETE ON paycron.disputes
  FOR EACH ROW EXECUTE FUNCTION paycron.refuse_change();
CREATE TRIGGER disputes_no_truncate BEFORE TRUNCATE ON paycron.disputes
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.refuse_change();

-- The ledger learns kinds. Existing entries are charges; a charge still has at most one entry
-- (its attempt's outcome), a refund at most one (its settlement), a dispute at most one of each
-- money movement. Postings: a refund debits revenue:refunds and credits the clearing account; a
-- dispute hold moves money from clearing to assets:held_in_dispute; won moves it back; lost
-- moves it to expenses:chargebacks.
ALTER TABLE paycron.ledger_entries
  ADD COLUMN kind text NOT NULL DEFAULT 'charge'
      CHECK (kind IN ('charge', 'refund', 'dispute_hold', 'dispute_won', 'dispute_lost')),
  ADD COLUMN refund_id uuid UNIQUE REFERENCES paycron.refunds (id),
  ADD COLUMN dispute_id text REFERENCES paycron.disputes (id),
  ADD COLUMN provider_refund_id text;
ALTER TABLE paycron.ledger_entries DROP CONSTRAINT ledger_entries_charge_id_key;
CREATE UNIQUE INDEX ledger_entries_one_per_charge ON paycron.ledger_entries (charge_id)
  WHERE kind = 'charge';
CREATE UNIQUE INDEX ledger_entries_one_per_dispute_kind ON paycron.ledger_entries (dispute_id, kind)
  WHERE dispute_id IS NOT NULL;
ALTER TABLE paycron.ledger_entries DROP CONSTRAINT ledger_entries_check;
ALTER TABLE paycron.ledger_entries ADD CONSTRAINT ledger_entries_shape CHECK (
  CASE kind
    WHEN 'charge' THEN (status = 'succeeded') = (provider_payment_id IS NOT NULL)
                       AND refund_id IS NULL AND dispute_id IS NULL
    WHEN 'refund' THEN refund_id IS NOT NULL AND dispute_id IS NULL AND provider_payment_id IS NULL
                       AND (status = 'succeeded') = (provider_refund_id IS NOT NULL)
    ELSE dispute_id IS NOT NULL AND refund_id IS NULL AND provider_payment_id IS NULL
         AND status = 'succeeded'
  END);
CREATE INDEX ledger_entries_charge ON paycron.ledger_entries (charge_id);

-- The one way a refund is asked for, from the CLI or the business's app: writes the refund (its
-- key and RefundPayment body included) in the caller's transaction; a worker sends it. Refused
-- with SQLSTATE 23514 (check_violation) when the charge did not succeed or the amount is more
-- than what is left, 22023 on a bad argument; nothing is written then. p_cancel: NULL, 'now' or
-- 'at_period_end' (the subscription's cancel, in the same transaction).
CREATE FUNCTION paycron.refund_charge(
  p_charge_id uuid, p_amount_minor bigint DEFAULT NULL, p_reason text DEFAULT NULL,
  p_cancel text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  c paycron.charges;
  v_id uuid := gen_random_uuid();
  v_key text;
  v_amount bigint;
BEGIN
  SELECT * INTO c FROM paycron.charges WHERE id = p_charge_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'charge % does not exist', p_charge_id USING ERRCODE = 'P0002';
  END IF;
  IF c.status <> 'succeeded' THEN
    RAISE EXCEPTION 'charge % is %, not succeeded: only money taken can be refunded', c.id, c.status
      USING ERRCODE = 'check_violation';
  END IF;
  IF p_reason IS NOT NULL AND (btrim(p_reason) = '' OR length(p_reason) > 192) THEN
    RAISE EXCEPTION 'reason must be 1 to 192 characters' USING ERRCODE = '22023';
  END IF;
  IF p_cancel IS NOT NULL AND p_cancel NOT IN ('now', 'at_period_end') THEN
    RAISE EXCEPTION 'cancel must be now or at_period_end, not %', p_cancel USING ERRCODE = '22023';
  END IF;
  IF p_amount_minor IS NOT NULL AND p_amount_minor <= 0 THEN
    RAISE EXCEPTION 'amount % is not positive', p_amount_minor USING ERRCODE = '22023';
  END IF;
  -- The default is what is left of the charge (the trigger decides under the charge's lock).
  v_amount := coalesce(p_amount_minor, c.amount_minor - (
    SELECT coalesce(sum(amount_minor), 0) FROM paycron.refunds
     WHERE charge_id = c.id AND status IN ('pending', 'completed')));
  IF v_amount <= 0 THEN
    RAISE EXCEPTION 'charge % is refunded in full already', c.id USING ERRCODE = 'check_violation';
  END IF;
  v_key := 'paycron-rf-' || replace(v_id::text, '-', '');
  INSERT INTO paycron.refunds (id, charge_id, provider_payment_id, idempotency_key, amount_minor,
                               currency, reason, request_body)
  VALUES (v_id, c.id, c.provider_payment_id, v_key, v_amount, c.currency, p_reason,
          json_strip_nulls(json_build_object(
            'idempotency_key', v_key,
            'amount_money', json_build_object('amount', v_amount, 'currency', c.currency),
            'payment_id', c.provider_payment_id,
            'reason', p_reason))::text);
  IF p_cancel IS NOT NULL THEN
    PERFORM paycron.cancel_subscription(c.subscription_id, p_cancel = 'at_period_end');
  END IF;
  RETURN v_id;
END $$;
REVOKE ALL ON FUNCTION paycron.refund_charge(uuid, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION paycron.refund_charge(uuid, bigint, text, text) TO paycron_app;
