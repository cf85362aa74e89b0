-- Enrollment at the counter (Square Point of Sale): the first period is paid in POS with the
-- customer attached, the card saved there is picked up, and every later period is charged on
-- file.
--
-- A subscription waiting for that card is `awaiting_card`: it has no card yet and bills
-- nothing. The first period's sale is a charge whose source is the counter (no card on file,
-- never sent by paycron, recorded as succeeded with Square's payment id), so it reaches the
-- ledger like every other charge, exactly once (one success per period, one row per payment).

ALTER TABLE paycron.subscriptions DROP CONSTRAINT subscriptions_status_check;
ALTER TABLE paycron.subscriptions ADD CONSTRAINT subscriptions_status_check
  CHECK (status IN ('awaiting_card', 'trialing', 'active', 'past_due', 'paused', 'unpaid', 'canceled', 'completed'));
ALTER TABLE paycron.subscriptions ALTER COLUMN card_id DROP NOT NULL;
ALTER TABLE paycron.subscriptions ADD CONSTRAINT subscriptions_card_on_file
  CHECK (card_id IS NOT NULL OR status IN ('awaiting_card', 'canceled'));

ALTER TABLE paycron.charges
  ADD COLUMN source text NOT NULL DEFAULT 'card_on_file' CHECK (source IN ('card_on_file', 'counter'));
ALTER TABLE paycron.charges ALTER COLUMN card_id DROP NOT NULL;
ALTER TABLE paycron.charges ADD CONSTRAINT charges_card_unless_counter
  CHECK (card_id IS NOT NULL OR source = 'counter');
-- paycron never sends a counter charge: it exists only once Square has the money.
ALTER TABLE paycron.charges ADD CONSTRAINT charges_counter_settled
  CHECK (source = 'card_on_file' OR status = 'succeeded');

-- One enrollment per subscription. The link's token is never stored, only its SHA-256.
CREATE TABLE paycron.enrollments (
  id                  uuid PRIMARY KEY,
  subscription_id     uuid NOT NULL UNIQUE REFERENCES paycron.subscriptions (id),
  customer_id         text NOT NULL REFERENCES paycron.customers (id),
  token_sha256        bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
  status              text NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open', 'paid', 'completed', 'expired', 'canceled')),
  -- Cards the customer already had: the one saved at the counter is a new one.
  known_cards         text[] NOT NULL DEFAULT '{}',
  expires_at          timestamptz NOT NULL,
  card_wait           interval NOT NULL,
  -- The last thing Point of Sale reported that was not a sale (its error code).
  last_error          text,
  charge_id           uuid UNIQUE REFERENCES paycron.charges (id),
  provider_payment_id text UNIQUE,
  card_id             text,
  -- When Square was last asked about this enrollment (the page's polling is throttled by it).
  checked_at          timestamptz,
  card_missing_at     timestamptz,
  created_at          timestamptz NOT NULL DEFAULT now(),
  paid_at             timestamptz,
  completed_at        timestamptz,
  updated_at          timestamptz NOT NULL DEFAULT now(),
  CHECK ((status IN ('paid', 'completed')) = (charge_id IS NOT NULL) OR status = 'canceled'),
  CHECK ((status = 'completed') = (card_id IS NOT NULL))
);
CREATE INDEX enrollments_waiting ON paycron.enrollments (customer_id) WHERE status IN ('open', 'paid');

-- The plan checks every way of creating a subscription shares.
CREATE FUNCTION paycron.check_plan(p_amount_minor bigint, p_currency text, p_interval_unit text,
  p_interval_count int, p_time_zone text, p_cycles int, p_anchor timestamptz, p_ends_at timestamptz)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = paycron, pg_temp AS $$
BEGIN
  IF p_amount_minor IS NULL OR p_amount_minor <= 0 THEN
    RAISE EXCEPTION 'amount % must be greater than 0', p_amount_minor USING ERRCODE = '22023';
  END IF;
  IF p_amount_minor > 1000000000000 THEN
    RAISE EXCEPTION 'amount % is above the cap of 1000000000000 minor units', p_amount_minor USING ERRCODE = '22023';
  END IF;
  IF p_currency IS NULL OR NOT EXISTS (SELECT 1 FROM paycron.currencies WHERE code = p_currency) THEN
    RAISE EXCEPTION 'currency % is not a three-letter ISO 4217 code (e.g. USD, EUR, JPY)', quote_literal(coalesce(p_currency, '')) USING ERRCODE = '22023';
  END IF;
  IF p_interval_unit IS NULL OR p_interval_unit NOT IN ('day', 'week', 'month', 'year')
     OR p_interval_count IS NULL OR p_interval_count NOT BETWEEN 1 AND 1000 THEN
    RAISE EXCEPTION 'interval % % is not N from 1 to 1000 of day, week, month or year', p_interval_count, quote_literal(coalesce(p_interval_unit, ''))
      USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM paycron.time_zones WHERE name = p_time_zone) THEN
    RAISE EXCEPTION 'time zone % is not a known IANA zone (e.g. UTC, America/New_York)', quote_literal(coalesce(p_time_zone, '')) USING ERRCODE = '22023';
  END IF;
  IF p_cycles IS NOT NULL AND p_cycles < 1 THEN
    RAISE EXCEPTION 'cycles % must be at least 1', p_cycles USING ERRCODE = '22023';
  END IF;
  PERFORM paycron.check_instant('anchor', p_anchor);
  PERFORM paycron.check_instant('ends_at', p_ends_at);
END $$;

-- Starts an enrollment: a subscription awaiting the card saved at the counter, and the link's
-- token (returned once; only its hash is kept). The customer must be known (created with
-- `paycron enroll --new-customer`, imported, or synced). The same external_ref with the same
-- terms returns the same subscription with a new token (the old link stops working); with
-- other terms it is refused, as for create_subscription.
CREATE FUNCTION paycron.enroll(
  p_customer_id text, p_amount_minor bigint, p_currency text, p_interval_unit text, p_interval_count int,
  p_anchor timestamptz DEFAULT NULL, p_time_zone text DEFAULT 'UTC', p_cycles int DEFAULT NULL,
  p_external_ref text DEFAULT NULL, p_ends_at timestamptz DEFAULT NULL,
  p_expires_in interval DEFAULT '24 hours', p_card_wait interval DEFAULT '15 minutes',
  p_now timestamptz DEFAULT NULL)
RETURNS TABLE (subscription_id uuid, token text, expires_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  v_token text := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
  v_id uuid;
  v_anchor timestamptz;
  v_existing paycron.subscriptions;
  v_enrollment paycron.enrollments;
BEGIN
  IF p_expires_in IS NULL OR p_expires_in < interval '1 minute' OR p_expires_in > interval '30 days' THEN
    RAISE EXCEPTION 'expiry % must be from 1 minute to 30 days', p_expires_in USING ERRCODE = '22023';
  END IF;
  IF p_card_wait IS NULL OR p_card_wait < interval '0' OR p_card_wait > interval '7 days' THEN
    RAISE EXCEPTION 'card wait % must be from 0 to 7 days', p_card_wait USING ERRCODE = '22023';
  END IF;
  IF p_external_ref IS NOT NULL THEN
    PERFORM pg_advisory_xact_lock(hashtextextended('paycron:external_ref:' || p_external_ref, 0));
    SELECT * INTO v_existing FROM paycron.subscriptions s WHERE s.external_ref = p_external_ref;
    IF FOUND THEN
      SELECT * INTO v_enrollment FROM paycron.enrollments e WHERE e.subscription_id = v_existing.id FOR UPDATE;
      IF NOT FOUND OR (v_existing.customer_id, v_existing.amount_minor, v_existing.currency, v_existing.interval_unit,
          v_existing.interval_count, v_existing.time_zone, v_existing.max_cycles)
         IS DISTINCT FROM
         (p_customer_id, p_amount_minor, p_currency, p_interval_unit, p_interval_count,
          coalesce(p_time_zone, 'UTC'), p_cycles) THEN
        RAISE EXCEPTION 'external_ref % is already used by subscription % with other terms (customer, amount, currency, interval, time zone or cycles, or not an enrollment); use a new reference',
          quote_literal(p_external_ref), v_existing.id USING ERRCODE = '22023';
      END IF;
      -- A new link for the same enrollment; an open one gets a fresh expiry.
      UPDATE paycron.enrollments e
         SET token_sha256 = sha256(convert_to(v_token, 'UTF8')),
             expires_at = CASE WHEN e.status = 'open' THEN v_now + p_expires_in ELSE e.expires_at END,
             updated_at = now()
       WHERE e.id = v_enrollment.id
      RETURNING e.expires_at INTO v_enrollment.expires_at;
      RETURN QUERY SELECT v_existing.id, v_token, v_enrollment.expires_at;
      RETURN;
    END IF;
  END IF;
  PERFORM paycron.check_plan(p_amount_minor, p_currency, p_interval_unit, p_interval_count,
                             p_time_zone, p_cycles, p_anchor, p_ends_at);
  PERFORM paycron.check_square_id('customer_id', p_customer_id, 191);
  IF NOT EXISTS (SELECT 1 FROM paycron.customers WHERE id = p_customer_id) THEN
    RAISE EXCEPTION 'customer % is unknown (create it with paycron enroll --new-customer, import it, or run sync-cards first)', p_customer_id
      USING ERRCODE = 'P0002';
  END IF;
  v_anchor := coalesce(p_anchor, v_now);
  IF p_ends_at IS NOT NULL AND p_ends_at <= v_anchor THEN
    RAISE EXCEPTION 'end date % is not after the first period''s start %', p_ends_at, v_anchor USING ERRCODE = '22023';
  END IF;
  v_id := gen_random_uuid();
  INSERT INTO paycron.subscriptions (id, customer_id, card_id, amount_minor, currency, interval_unit, interval_count,
                                     anchor, time_zone, status, max_cycles, ends_at, next_due_at, external_ref)
  VALUES (v_id, p_customer_id, NULL, p_amount_minor, p_currency, p_interval_unit, p_interval_count,
          v_anchor, p_time_zone, 'awaiting_card', p_cycles, p_ends_at, NULL, p_external_ref);
  INSERT INTO paycron.enrollments (id, subscription_id, customer_id, token_sha256, known_cards, expires_at, card_wait)
  VALUES (gen_random_uuid(), v_id, p_customer_id, sha256(convert_to(v_token, 'UTF8')),
          ARRAY(SELECT c.id FROM paycron.cards c WHERE c.customer_id = p_customer_id),
          v_now + p_expires_in, p_card_wait);
  PERFORM paycron.emit('subscription_created', v_id, p_customer_id, NULL,
    jsonb_build_object('amount_minor', p_amount_minor, 'currency', p_currency,
                       'interval', p_interval_count || p_interval_unit, 'anchor', v_anchor,
                       'enrollment', true));
  RETURN QUERY SELECT v_id, v_token, v_now + p_expires_in;
END $$;

-- Completes a paid enrollment with the card the customer saved at the counter: the newest
-- enabled card of that customer that was not on file when the enrollment began. True when
-- the subscription became active.
CREATE FUNCTION paycron.complete_enrollment(p_enrollment uuid)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  e paycron.enrollments;
  v_card text;
BEGIN
  SELECT * INTO e FROM paycron.enrollments WHERE id = p_enrollment AND status = 'paid' FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  SELECT c.id INTO v_card FROM paycron.cards c
   WHERE c.customer_id = e.customer_id AND c.enabled AND NOT c.forgotten
     AND c.id <> ALL (e.known_cards)
     AND (c.exp_year IS NULL OR make_date(c.exp_year, coalesce(c.exp_month, 12), 1) + interval '1 month' > now())
   ORDER BY c.created_at DESC, c.id DESC LIMIT 1;
  IF v_card IS NULL THEN
    RETURN false;
  END IF;
  UPDATE paycron.subscriptions
     SET card_id = v_card, status = 'active', updated_at = now()
   WHERE id = e.subscription_id AND status = 'awaiting_card';
  UPDATE paycron.enrollments
     SET status = 'completed', card_id = v_card, completed_at = now(), updated_at = now()
   WHERE id = e.id;
  PERFORM paycron.emit('enrollment_completed', e.subscription_id, e.customer_id, e.charge_id,
                       jsonb_build_object('card_id', v_card));
  RETURN true;
END $$;

-- Whatever brings a new card (the card.created webhook, polling ListCards, sync-cards, an
-- import) completes the paid enrollments of its customer.
CREATE FUNCTION paycron.card_completes_enrollments() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_id uuid;
BEGIN
  FOR v_id IN SELECT id FROM paycron.enrollments WHERE customer_id = NEW.customer_id AND status = 'paid' LOOP
    PERFORM paycron.complete_enrollment(v_id);
  END LOOP;
  RETURN NULL;
END $$;
CREATE TRIGGER cards_complete_enrollments AFTER INSERT OR UPDATE OF enabled ON paycron.cards
  FOR EACH ROW WHEN (NEW.enabled) EXECUTE FUNCTION paycron.card_completes_enrollments();

-- Expires unpaid links (their subscription is canceled: nothing was sold) ten minutes after
-- their expiry, so that a sale begun just before it is found first (the enrollments task keeps
-- asking Square meanwhile), and announces paid enrollments whose card has not come within
-- their wait.
CREATE FUNCTION paycron.sweep_enrollments(p_now timestamptz DEFAULT NULL)
RETURNS TABLE (expired int, card_missing int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  e paycron.enrollments;
  v_expired int := 0;
  v_missing int := 0;
BEGIN
  FOR e IN SELECT * FROM paycron.enrollments
            WHERE status = 'open' AND enrollments.expires_at + interval '10 minutes' <= v_now
            FOR UPDATE SKIP LOCKED LOOP
    UPDATE paycron.enrollments SET status = 'expired', updated_at = now() WHERE id = e.id;
    UPDATE paycron.subscriptions
       SET status = 'canceled', next_due_at = NULL, canceled_at = v_now, updated_at = now()
     WHERE id = e.subscription_id AND status = 'awaiting_card';
    PERFORM paycron.emit('enrollment_expired', e.subscription_id, e.customer_id, NULL, '{}'::jsonb);
    PERFORM paycron.emit('subscription_canceled', e.subscription_id, e.customer_id, NULL,
                         jsonb_build_object('reason', 'enrollment_expired'));
    v_expired := v_expired + 1;
  END LOOP;
  FOR e IN SELECT * FROM paycron.enrollments
            WHERE status = 'paid' AND card_missing_at IS NULL AND paid_at + card_wait <= v_now
            FOR UPDATE SKIP LOCKED LOOP
    UPDATE paycron.enrollments SET card_missing_at = v_now, updated_at = now() WHERE id = e.id;
    PERFORM paycron.emit('enrollment_card_missing', e.subscription_id, e.customer_id, e.charge_id,
                         jsonb_build_object('paid_at', e.paid_at));
    v_missing := v_missing + 1;
  END LOOP;
  RETURN QUERY SELECT v_expired, v_missing;
END $$;

-- A subscription awaiting its counter card takes no other card: the enrollment brings it.
CREATE OR REPLACE FUNCTION paycron.change_card(p_id uuid, p_card_id text, p_now timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  v paycron.subscriptions := paycron.lock_subscription(p_id);
  v_card text := paycron.check_square_id('card_id', p_card_id, 64);
  v_owner text;
  v_enabled boolean;
BEGIN
  IF v.status IN ('canceled', 'completed') THEN
    RAISE EXCEPTION 'subscription % is %, a canceled or completed subscription bills nothing', p_id, v.status
      USING ERRCODE = '22023';
  END IF;
  IF v.status = 'awaiting_card' THEN
    RAISE EXCEPTION 'subscription % is awaiting_card, its card is the one saved at the counter (any new card of the customer completes it)', p_id
      USING ERRCODE = '22023';
  END IF;
  SELECT customer_id, enabled INTO v_owner, v_enabled FROM paycron.cards WHERE id = v_card;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'card % is unknown', v_card USING ERRCODE = 'P0002';
  END IF;
  IF v_owner <> v.customer_id THEN
    RAISE EXCEPTION 'card % belongs to customer %, not %', v_card, v_owner, v.customer_id USING ERRCODE = '22023';
  END IF;
  IF NOT v_enabled THEN
    RAISE EXCEPTION 'card % is disabled', v_card USING ERRCODE = '22023';
  END IF;
  UPDATE paycron.subscriptions SET card_id = v_card, updated_at = now() WHERE id = p_id;
  PERFORM paycron.revive(p_id, v_now);
  PERFORM paycron.emit('subscription_card_changed', p_id, v.customer_id, NULL, jsonb_build_object('card_id', v_card));
  RETURN (SELECT status FROM paycron.subscriptions WHERE id = p_id);
END $$;

-- Canceling a subscription closes its enrollment: its link then says so.
CREATE FUNCTION paycron.cancel_closes_enrollment() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
BEGIN
  UPDATE paycron.enrollments SET status = 'canceled', updated_at = now()
   WHERE subscription_id = NEW.id AND status IN ('open', 'paid');
  RETURN NULL;
END $$;
CREATE TRIGGER subscriptions_cancel_closes_enrollment AFTER UPDATE OF status ON paycron.subscriptions
  FOR EACH ROW WHEN (NEW.status = 'canceled' AND OLD.status = 'awaiting_card')
  EXECUTE FUNCTION paycron.cancel_closes_enrollment();

REVOKE ALL ON FUNCTION paycron.enroll(text, bigint, text, text, int, timestamptz, text, int, text, timestamptz, interval, interval, timestamptz),
  paycron.complete_enrollment(uuid), paycron.sweep_enrollments(timestamptz),
  paycron.check_plan(bigint, text, text, int, text, int, timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION paycron.enroll(text, bigint, text, text, int, timestamptz, text, int, text, timestamptz, interval, interval, timestamptz)
  TO paycron_app;
