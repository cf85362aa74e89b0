-- The business's lifecycle commands, rewritten to follow the one lifecycle table of
-- `domain::lifecycle::on_command` (a test checks every (status, command) pair against it), and
-- to take a test clock (`p_now`, default the transaction's time).
--
-- The calendar is not computed in SQL: a change that needs it (a resume, a past anchor, a
-- revival) records what was asked (`skip_before`) and makes the subscription due at once; the
-- engine's lifecycle moves it to the right period at its next look (the CLI does so in the same
-- transaction).

DROP FUNCTION paycron.create_subscription(text, bigint, text, text, int, text, timestamptz, text, int, int, text, timestamptz);
DROP FUNCTION paycron.cancel_subscription(uuid, boolean);
DROP FUNCTION paycron.pause_subscription(uuid);
DROP FUNCTION paycron.resume_subscription(uuid);
DROP FUNCTION paycron.change_card(uuid, text);

CREATE FUNCTION paycron.check_instant(p_what text, p_value timestamptz) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_value IS NOT NULL AND (NOT isfinite(p_value)
      OR p_value < '1970-01-01T00:00:00Z' OR p_value >= '2200-01-01T00:00:00Z') THEN
    RAISE EXCEPTION '% % is not an instant between 1970 and 2200', p_what, p_value USING ERRCODE = '22023';
  END IF;
  RETURN p_value;
END $$;

-- Creates a subscription and returns its id. Period 0 starts at the anchor (default: now), or
-- when the trial ends. A past anchor only sets the cycle: billing starts with the first period
-- that begins at or after creation. With p_external_ref, a repeated call returns the existing id.
CREATE FUNCTION paycron.create_subscription(
  p_customer_id text, p_amount_minor bigint, p_currency text, p_interval_unit text, p_interval_count int,
  p_card_id text DEFAULT NULL, p_anchor timestamptz DEFAULT NULL, p_time_zone text DEFAULT 'UTC',
  p_cycles int DEFAULT NULL, p_trial_days int DEFAULT 0, p_external_ref text DEFAULT NULL,
  p_ends_at timestamptz DEFAULT NULL, p_now timestamptz DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  v_id uuid;
  v_card text;
  v_enabled boolean;
  v_owner text;
  v_anchor timestamptz;
  v_trial_end timestamptz;
  v_existing paycron.subscriptions;
BEGIN
  IF p_external_ref IS NOT NULL THEN
    SELECT * INTO v_existing FROM paycron.subscriptions WHERE external_ref = p_external_ref;
    IF FOUND THEN
      RETURN v_existing.id;
    END IF;
  END IF;
  IF p_amount_minor IS NULL OR p_amount_minor <= 0 THEN
    RAISE EXCEPTION 'amount % must be greater than 0', p_amount_minor USING ERRCODE = '22023';
  END IF;
  IF p_amount_minor > 1000000000000 THEN
    RAISE EXCEPTION 'amount % is above the cap of 1000000000000 minor units', p_amount_minor USING ERRCODE = '22023';
  END IF;
  IF p_currency IS NULL OR p_currency !~ '^[A-Z]{3}$' THEN
    RAISE EXCEPTION 'currency % is not a three-letter ISO 4217 code (e.g. USD, EUR, JPY)', quote_literal(coalesce(p_currency, '')) USING ERRCODE = '22023';
  END IF;
  IF p_interval_unit IS NULL OR p_interval_unit NOT IN ('day', 'week', 'month', 'year')
     OR p_interval_count IS NULL OR p_interval_count NOT BETWEEN 1 AND 1000 THEN
    RAISE EXCEPTION 'interval % % is not N from 1 to 1000 of day, week, month or year', p_interval_count, quote_literal(coalesce(p_interval_unit, ''))
      USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = p_time_zone) THEN
    RAISE EXCEPTION 'time zone % is not a known IANA zone (e.g. UTC, America/New_York)', quote_literal(coalesce(p_time_zone, '')) USING ERRCODE = '22023';
  END IF;
  IF p_cycles IS NOT NULL AND p_cycles < 1 THEN
    RAISE EXCEPTION 'cycles % must be at least 1', p_cycles USING ERRCODE = '22023';
  END IF;
  IF p_trial_days IS NOT NULL AND p_trial_days NOT BETWEEN 0 AND 3650 THEN
    RAISE EXCEPTION 'trial days % must be between 0 and 3650', p_trial_days USING ERRCODE = '22023';
  END IF;
  PERFORM paycron.check_instant('anchor', p_anchor);
  PERFORM paycron.check_instant('ends_at', p_ends_at);
  PERFORM paycron.check_square_id('customer_id', p_customer_id, 191);
  IF NOT EXISTS (SELECT 1 FROM paycron.customers WHERE id = p_customer_id) THEN
    RAISE EXCEPTION 'customer % is unknown (import its card or run sync-cards first)', p_customer_id USING ERRCODE = 'P0002';
  END IF;
  IF p_card_id IS NOT NULL THEN
    v_card := paycron.check_square_id('card_id', p_card_id, 64);
    SELECT customer_id, enabled INTO v_owner, v_enabled FROM paycron.cards WHERE id = v_card;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'card % is unknown', v_card USING ERRCODE = 'P0002';
    END IF;
    IF v_owner <> p_customer_id THEN
      RAISE EXCEPTION 'card % belongs to customer %, not %', v_card, v_owner, p_customer_id USING ERRCODE = '22023';
    END IF;
    IF NOT v_enabled THEN
      RAISE EXCEPTION 'card % is disabled', v_card USING ERRCODE = '22023';
    END IF;
  ELSE
    SELECT id INTO v_card FROM paycron.cards
      WHERE customer_id = p_customer_id AND enabled ORDER BY updated_at DESC, id LIMIT 1;
    IF v_card IS NULL THEN
      RAISE EXCEPTION 'customer % has no enabled card on file', p_customer_id USING ERRCODE = 'P0002';
    END IF;
  END IF;

  v_anchor := coalesce(p_anchor, v_now);
  IF coalesce(p_trial_days, 0) > 0 THEN
    v_trial_end := v_anchor + make_interval(days => p_trial_days);
    v_anchor := v_trial_end;
  END IF;
  IF p_ends_at IS NOT NULL AND p_ends_at <= greatest(v_anchor, v_now) THEN
    RAISE EXCEPTION 'end date % is not after the first billing date %', p_ends_at, greatest(v_anchor, v_now) USING ERRCODE = '22023';
  END IF;
  v_id := gen_random_uuid();
  INSERT INTO paycron.subscriptions (id, customer_id, card_id, amount_minor, currency, interval_unit, interval_count,
                                     anchor, time_zone, status, trial_ends_at, max_cycles, ends_at, next_due_at,
                                     skip_before, external_ref)
  VALUES (v_id, p_customer_id, v_card, p_amount_minor, p_currency, p_interval_unit, p_interval_count,
          v_anchor, p_time_zone, CASE WHEN v_trial_end IS NULL THEN 'active' ELSE 'trialing' END,
          v_trial_end, p_cycles, p_ends_at, greatest(v_anchor, v_now),
          CASE WHEN v_anchor < v_now THEN v_now END, p_external_ref);
  PERFORM paycron.emit('subscription_created', v_id, p_customer_id, NULL,
    jsonb_build_object('amount_minor', p_amount_minor, 'currency', p_currency,
                       'interval', p_interval_count || p_interval_unit, 'anchor', v_anchor));
  RETURN v_id;
END $$;

-- Cancels now (nothing more is billed) or at the end of the period already paid for (only an
-- active or trialing subscription has one; any other cancels now).
CREATE FUNCTION paycron.cancel_subscription(p_id uuid, p_at_period_end boolean DEFAULT false, p_now timestamptz DEFAULT NULL)
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
    RETURN 'cancel_at_period_end';
  END IF;
  UPDATE paycron.subscriptions
     SET status = 'canceled', next_due_at = NULL, canceled_at = v_now, updated_at = now()
   WHERE id = p_id;
  PERFORM paycron.emit('subscription_canceled', p_id, v.customer_id, NULL, jsonb_build_object('reason', 'requested'));
  RETURN 'canceled';
END $$;

CREATE FUNCTION paycron.pause_subscription(p_id uuid, p_now timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  v paycron.subscriptions := paycron.lock_subscription(p_id);
BEGIN
  IF v.status = 'paused' THEN
    RETURN 'paused';
  END IF;
  IF v.status NOT IN ('active', 'trialing', 'past_due') THEN
    RAISE EXCEPTION 'subscription % is %, only an active, trialing or past-due subscription can be paused', p_id, v.status
      USING ERRCODE = '22023';
  END IF;
  UPDATE paycron.subscriptions SET status = 'paused', updated_at = now() WHERE id = p_id;
  PERFORM paycron.emit('subscription_paused', p_id, v.customer_id, NULL, jsonb_build_object('at', v_now));
  RETURN 'paused';
END $$;

-- Resumes a paused subscription. Periods that began during the pause are skipped, not billed:
-- the next billed period is the first that begins at or after the resume. A subscription paused
-- while past due resumes its dunning where it stood.
CREATE FUNCTION paycron.resume_subscription(p_id uuid, p_now timestamptz DEFAULT NULL)
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
  RETURN 'resumed';
END $$;

-- What a new or updated card does to the subscriptions charged on it: an unpaid one is revived
-- (past due, a fresh dunning, due now), a past-due one is retried now. One rule for a card the
-- business chose (change_card) and one Square updated (card.automatically_updated, sync-cards).
CREATE FUNCTION paycron.revive(p_id uuid, p_now timestamptz) RETURNS void
LANGUAGE sql AS $$
  UPDATE paycron.subscriptions
     SET status = 'past_due',
         dunning_started_at = CASE WHEN status = 'unpaid' THEN NULL ELSE dunning_started_at END,
         next_due_at = p_now, updated_at = now()
   WHERE id = p_id AND status IN ('unpaid', 'past_due')
$$;

-- Moves a subscription to another enabled card of the same customer. An unpaid or past-due
-- subscription is billed again at once with the new card (a new attempt, a new key).
CREATE FUNCTION paycron.change_card(p_id uuid, p_card_id text, p_now timestamptz DEFAULT NULL)
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
  RETURN 'changed';
END $$;

-- Square updated a card (new expiry or number): revives the subscriptions charged on it.
-- Returns how many.
CREATE FUNCTION paycron.card_updated(p_card_id text, p_now timestamptz DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_now timestamptz := coalesce(paycron.check_instant('now', p_now), now());
  v_id uuid;
  v_count int := 0;
BEGIN
  FOR v_id IN SELECT id FROM paycron.subscriptions
               WHERE card_id = p_card_id AND status IN ('unpaid', 'past_due') ORDER BY id FOR UPDATE
  LOOP
    PERFORM paycron.revive(v_id, v_now);
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA paycron FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  paycron.upsert_customer_card(text, text, text, text, int, int, boolean),
  paycron.create_subscription(text, bigint, text, text, int, text, timestamptz, text, int, int, text, timestamptz, timestamptz),
  paycron.cancel_subscription(uuid, boolean, timestamptz),
  paycron.pause_subscription(uuid, timestamptz),
  paycron.resume_subscription(uuid, timestamptz),
  paycron.change_card(uuid, text, timestamptz),
  paycron.looks_like_card_number(text),
  paycron.check_square_id(text, text, int),
  paycron.check_instant(text, timestamptz)
TO paycron_app;
