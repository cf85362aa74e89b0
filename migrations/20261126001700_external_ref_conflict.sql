-- A reused external_ref with other terms is refused instead of returning the subscription that
-- holds it (which may be another customer's), and concurrent creates with one reference take
-- turns on it, so the loser gets the winner's id (same terms) or 22023 (other terms), never a
-- unique violation. Same signature: only the body changes.

CREATE OR REPLACE FUNCTION paycron.create_subscription(
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
    -- Concurrent creates with one reference take turns: the second sees the first's row once
    -- it commits (same terms: its id; other terms: refused), never a raw unique violation.
    PERFORM pg_advisory_xact_lock(hashtextextended('paycron:external_ref:' || p_external_ref, 0));
    SELECT * INTO v_existing FROM paycron.subscriptions WHERE external_ref = p_external_ref;
    IF FOUND THEN
      -- A retry with the same terms returns the same subscription; the same reference with
      -- other terms is a mistake (or another customer's reference), never a silent success.
      IF (v_existing.customer_id, v_existing.amount_minor, v_existing.currency, v_existing.interval_unit,
          v_existing.interval_count, v_existing.time_zone, v_existing.max_cycles)
         IS DISTINCT FROM
         (p_customer_id, p_amount_minor, p_currency, p_interval_unit, p_interval_count,
          coalesce(p_time_zone, 'UTC'), p_cycles) THEN
        RAISE EXCEPTION 'external_ref % is already used by subscription % with other terms (customer, amount, currency, interval, time zone or cycles); use a new reference',
          quote_literal(p_external_ref), v_existing.id USING ERRCODE = '22023';
      END IF;
      RETURN v_existing.id;
    END IF;
  END IF;
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
