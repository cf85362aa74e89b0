-- Changes a business makes, round two: a new price from the next period that begins after the
-- change (no proration), undoing a cancel at period end, and one vocabulary for what the writers
-- return: the subscription's resulting status.

-- A price waiting for its first period: promoted when the subscription's next period reaches it
-- (the engine's position writes do that, in the same statement).
ALTER TABLE paycron.subscriptions
  ADD COLUMN pending_amount_minor bigint CHECK (pending_amount_minor > 0 AND pending_amount_minor <= 1000000000000),
  ADD COLUMN pending_currency text REFERENCES paycron.currencies (code),
  ADD COLUMN pending_from_period int,
  ADD CONSTRAINT subscriptions_pending_price CHECK (
    (pending_amount_minor IS NULL) = (pending_currency IS NULL)
    AND (pending_amount_minor IS NULL) = (pending_from_period IS NULL));

CREATE OR REPLACE FUNCTION paycron.resume_subscription(p_id uuid, p_now timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  v paycron.subscriptions := paycron.lock_subscription(p_id);
BEGIN
  IF v.status <> 'paused' THEN
    IF v.status IN ('active', 'trialing', 'past_due') THEN
      RETURN v.status;
    END IF;
    RAISE EXCEPTION 'subscription % is %, only a paused subscription can be resumed', p_id, v.status USING ERRCODE = '22023';
  END IF;
  IF v.dunning_started_at IS NOT NULL THEN
    UPDATE paycron.subscriptions SET status = 'past_due', updated_at = now() WHERE id = p_id;
  ELSE
    UPDATE paycron.subscriptions
       SET status = CASE WHEN v.trial_ends_at > v_now THEN 'trialing' ELSE 'active' END,
           skip_before = v_now, next_due_at = v_now, updated_at = now()
     WHERE id = p_id;
  END IF;
  PERFORM paycron.emit('subscription_resumed', p_id, v.customer_id, NULL, jsonb_build_object('at', v_now));
  RETURN (SELECT status FROM paycron.subscriptions WHERE id = p_id);
END $$;

CREATE OR REPLACE FUNCTION paycron.cancel_subscription(p_id uuid, p_at_period_end boolean DEFAULT false, p_now timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  v paycron.subscriptions := paycron.lock_subscription(p_id);
BEGIN
  IF v.status IN ('canceled', 'completed') THEN
    RETURN v.status;
  END IF;
  IF p_at_period_end AND v.status IN ('active', 'trialing') THEN
    IF NOT v.cancel_at_period_end THEN
      UPDATE paycron.subscriptions SET cancel_at_period_end = true, updated_at = now() WHERE id = p_id;
      PERFORM paycron.emit('subscription_cancel_scheduled', p_id, v.customer_id, NULL,
                           jsonb_build_object('at', v.next_due_at));
    END IF;
    RETURN v.status;
  END IF;
  UPDATE paycron.subscriptions
     SET status = 'canceled', next_due_at = NULL, canceled_at = v_now, updated_at = now()
   WHERE id = p_id;
  PERFORM paycron.emit('subscription_canceled', p_id, v.customer_id, NULL, jsonb_build_object('reason', 'requested'));
  RETURN 'canceled';
END $$;

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

-- Changes the price from the next period that begins after now: at once when that period is
-- the next to bill (it has not begun), else from the one after (a period already begun, due or
-- in dunning, keeps the price it began with). Returns the subscription's status.
CREATE FUNCTION paycron.change_price(p_id uuid, p_amount_minor bigint, p_currency text DEFAULT NULL,
  p_effective text DEFAULT 'next_period', p_now timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  v paycron.subscriptions := paycron.lock_subscription(p_id);
  v_currency text := coalesce(p_currency, v.currency);
  v_from int;
BEGIN
  IF v.status IN ('canceled', 'completed') THEN
    RAISE EXCEPTION 'subscription % is %, a canceled or completed subscription bills nothing', p_id, v.status
      USING ERRCODE = '22023';
  END IF;
  IF p_effective IS DISTINCT FROM 'next_period' THEN
    RAISE EXCEPTION 'effective % is not next_period (the only choice: no proration)', quote_literal(coalesce(p_effective, ''))
      USING ERRCODE = '22023';
  END IF;
  IF p_amount_minor IS NULL OR p_amount_minor <= 0 OR p_amount_minor > 1000000000000 THEN
    RAISE EXCEPTION 'amount % must be greater than 0 and at most 1000000000000', p_amount_minor USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM paycron.currencies WHERE code = v_currency) THEN
    RAISE EXCEPTION 'currency % is not a three-letter ISO 4217 code (e.g. USD, EUR, JPY)', quote_literal(v_currency)
      USING ERRCODE = '22023';
  END IF;
  v_from := CASE
    WHEN v.status = 'paused' THEN v.next_period
    WHEN v.status IN ('active', 'trialing') AND v.next_due_at > v_now THEN v.next_period
    ELSE v.next_period + 1 END;
  IF v_from = v.next_period THEN
    UPDATE paycron.subscriptions
       SET amount_minor = p_amount_minor, currency = v_currency, pending_amount_minor = NULL,
           pending_currency = NULL, pending_from_period = NULL, updated_at = now()
     WHERE id = p_id;
  ELSE
    UPDATE paycron.subscriptions
       SET pending_amount_minor = p_amount_minor, pending_currency = v_currency,
           pending_from_period = v_from, updated_at = now()
     WHERE id = p_id;
  END IF;
  PERFORM paycron.emit('subscription_price_changed', p_id, v.customer_id, NULL,
    jsonb_build_object('amount_minor', p_amount_minor, 'currency', v_currency, 'from_period', v_from,
                       'previous_amount_minor', v.amount_minor, 'previous_currency', v.currency));
  RETURN v.status;
END $$;

-- Undoes a cancel at period end: the subscription bills on. Returns its status.
CREATE FUNCTION paycron.keep_subscription(p_id uuid, p_now timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v paycron.subscriptions := paycron.lock_subscription(p_id);
BEGIN
  PERFORM paycron.check_instant('now', p_now);
  IF v.status IN ('canceled', 'completed') THEN
    RAISE EXCEPTION 'subscription % is %, a canceled or completed subscription cannot be kept', p_id, v.status
      USING ERRCODE = '22023';
  END IF;
  IF v.cancel_at_period_end THEN
    UPDATE paycron.subscriptions SET cancel_at_period_end = false, updated_at = now() WHERE id = p_id;
    PERFORM paycron.emit('subscription_cancel_unscheduled', p_id, v.customer_id, NULL, '{}'::jsonb);
  END IF;
  RETURN v.status;
END $$;

REVOKE ALL ON FUNCTION paycron.change_price(uuid, bigint, text, text, timestamptz),
  paycron.keep_subscription(uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION paycron.change_price(uuid, bigint, text, text, timestamptz),
  paycron.keep_subscription(uuid, timestamptz) TO paycron_app;

-- The read side shows a price waiting for its period.
ALTER TYPE paycron.subscription_state
  ADD ATTRIBUTE pending_amount_minor bigint,
  ADD ATTRIBUTE pending_currency text,
  ADD ATTRIBUTE pending_from_period int;
CREATE OR REPLACE FUNCTION paycron.subscription_states(p_ids uuid[])
RETURNS SETOF paycron.subscription_state
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
  SELECT s.id, s.customer_id, s.status, s.amount_minor, s.currency,
         s.interval_unit, s.interval_count, s.time_zone, s.anchor,
         s.card_id, k.card_brand, k.last_4, k.exp_month, k.exp_year,
         (SELECT max(c.period) FROM paycron.charges c WHERE c.subscription_id = s.id),
         s.next_period, s.next_due_at,
         CASE WHEN s.status = 'past_due' THEN
           (SELECT count(*)::int FROM paycron.charges c
             WHERE c.subscription_id = s.id AND c.period = s.next_period AND c.status = 'declined')
         ELSE 0 END,
         s.cancel_at_period_end, s.trial_ends_at, s.max_cycles, s.ends_at,
         s.external_ref, s.created_at, s.canceled_at,
         s.pending_amount_minor, s.pending_currency, s.pending_from_period
    FROM paycron.subscriptions s LEFT JOIN paycron.cards k ON k.id = s.card_id
   WHERE s.id = ANY(p_ids)
   ORDER BY s.created_at, s.id
$$;
