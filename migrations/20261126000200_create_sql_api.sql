-- The business's side: functions an application calls over its own connection, inside its own
-- transaction, to manage subscriptions. The paycron CLI calls the same functions, so there is
-- one path and one set of validation messages. Each change writes its event in the same
-- transaction. Errors are raised with SQLSTATE 22023 (invalid_parameter_value) or
-- P0002 (no_data_found) and a message naming the field.

CREATE FUNCTION paycron.emit(p_type text, p_subscription uuid, p_customer text, p_charge uuid, p_payload jsonb)
RETURNS bigint LANGUAGE sql AS $$
  INSERT INTO paycron.events (type, subscription_id, customer_id, charge_id, payload)
  VALUES (p_type, p_subscription, p_customer, p_charge, coalesce(p_payload, '{}'))
  RETURNING id
$$;

CREATE FUNCTION paycron.check_square_id(p_what text, p_value text, p_max int) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_value IS NULL OR btrim(p_value) = '' THEN
    RAISE EXCEPTION '% is empty', p_what USING ERRCODE = '22023';
  END IF;
  IF paycron.looks_like_card_number(p_value) THEN
    RAISE EXCEPTION '% looks like a card number (13-19 digits passing the Luhn check); paycron stores only Square ids, never card numbers', p_what
      USING ERRCODE = '22023';
  END IF;
  IF length(btrim(p_value)) > p_max THEN
    RAISE EXCEPTION '% is longer than % characters', p_what, p_max USING ERRCODE = '22023';
  END IF;
  IF btrim(p_value) ~ '[[:space:][:cntrl:]]' THEN
    RAISE EXCEPTION '% % contains whitespace or control characters', p_what, quote_literal(p_value) USING ERRCODE = '22023';
  END IF;
  RETURN btrim(p_value);
END $$;

-- Inserts or updates a customer and one of its cards (for apps that store Square ids themselves,
-- and for `paycron cards import`). Display fields only: brand, last 4, expiry. Returns whether
-- the card row changed.
CREATE FUNCTION paycron.upsert_customer_card(
  p_customer_id text, p_card_id text, p_card_brand text DEFAULT NULL, p_last_4 text DEFAULT NULL,
  p_exp_month int DEFAULT NULL, p_exp_year int DEFAULT NULL, p_enabled boolean DEFAULT true)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_customer text := paycron.check_square_id('customer_id', p_customer_id, 191);
  v_card text := paycron.check_square_id('card_id', p_card_id, 64);
  v_owner text;
  v_rows int;
BEGIN
  IF p_last_4 IS NOT NULL AND p_last_4 !~ '^[0-9]{4}$' THEN
    RAISE EXCEPTION 'last_4 % is not four digits', quote_literal(p_last_4) USING ERRCODE = '22023';
  END IF;
  IF p_exp_month IS NOT NULL AND p_exp_month NOT BETWEEN 1 AND 12 THEN
    RAISE EXCEPTION 'exp_month % is not between 1 and 12', p_exp_month USING ERRCODE = '22023';
  END IF;
  IF p_exp_year IS NOT NULL AND p_exp_year NOT BETWEEN 1990 AND 2200 THEN
    RAISE EXCEPTION 'exp_year % is not a four-digit year', p_exp_year USING ERRCODE = '22023';
  END IF;
  IF p_card_brand IS NOT NULL AND upper(p_card_brand) !~ '^[A-Z_]{1,40}$' THEN
    RAISE EXCEPTION 'card_brand % is not a Square card brand (e.g. VISA, MASTERCARD)', quote_literal(p_card_brand) USING ERRCODE = '22023';
  END IF;
  SELECT customer_id INTO v_owner FROM paycron.cards WHERE id = v_card;
  IF v_owner IS NOT NULL AND v_owner <> v_customer THEN
    RAISE EXCEPTION 'card_id % belongs to customer %, not %', v_card, v_owner, v_customer USING ERRCODE = '22023';
  END IF;
  INSERT INTO paycron.customers (id) VALUES (v_customer) ON CONFLICT (id) DO NOTHING;
  INSERT INTO paycron.cards (id, customer_id, card_brand, last_4, exp_month, exp_year, enabled)
  VALUES (v_card, v_customer, coalesce(upper(p_card_brand), 'OTHER_BRAND'), p_last_4, p_exp_month, p_exp_year, coalesce(p_enabled, true))
  ON CONFLICT (id) DO UPDATE SET
    card_brand = coalesce(upper(EXCLUDED.card_brand), cards.card_brand),
    last_4 = coalesce(EXCLUDED.last_4, cards.last_4),
    exp_month = coalesce(EXCLUDED.exp_month, cards.exp_month),
    exp_year = coalesce(EXCLUDED.exp_year, cards.exp_year),
    enabled = EXCLUDED.enabled AND NOT cards.forgotten,
    updated_at = now()
  WHERE (cards.card_brand, cards.last_4, cards.exp_month, cards.exp_year, cards.enabled)
        IS DISTINCT FROM (coalesce(upper(EXCLUDED.card_brand), cards.card_brand), coalesce(EXCLUDED.last_4, cards.last_4),
                          coalesce(EXCLUDED.exp_month, cards.exp_month), coalesce(EXCLUDED.exp_year, cards.exp_year),
                          EXCLUDED.enabled AND NOT cards.forgotten);
  GET DIAGNOSTICS v_rows = ROW_COUNT;
  RETURN v_rows > 0;
END $$;

-- Creates a subscription and returns its id. Period 0 starts at the anchor (default: now),
-- or when the trial ends. With p_external_ref, a repeated call returns the existing id.
CREATE FUNCTION paycron.create_subscription(
  p_customer_id text, p_amount_minor bigint, p_currency text, p_interval_unit text, p_interval_count int,
  p_card_id text DEFAULT NULL, p_anchor timestamptz DEFAULT NULL, p_time_zone text DEFAULT 'UTC',
  p_cycles int DEFAULT NULL, p_trial_days int DEFAULT 0, p_external_ref text DEFAULT NULL,
  p_ends_at timestamptz DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
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

  v_anchor := coalesce(p_anchor, now());
  IF coalesce(p_trial_days, 0) > 0 THEN
    v_trial_end := v_anchor + make_interval(days => p_trial_days);
    v_anchor := v_trial_end;
  END IF;
  IF p_ends_at IS NOT NULL AND p_ends_at <= v_anchor THEN
    RAISE EXCEPTION 'end date % is not after the first billing date %', p_ends_at, v_anchor USING ERRCODE = '22023';
  END IF;
  v_id := gen_random_uuid();
  INSERT INTO paycron.subscriptions (id, customer_id, card_id, amount_minor, currency, interval_unit, interval_count,
                                     anchor, time_zone, status, trial_ends_at, max_cycles, ends_at, next_due_at, external_ref)
  VALUES (v_id, p_customer_id, v_card, p_amount_minor, p_currency, p_interval_unit, p_interval_count,
          v_anchor, p_time_zone, CASE WHEN v_trial_end IS NULL THEN 'active' ELSE 'trialing' END,
          v_trial_end, p_cycles, p_ends_at, v_anchor, p_external_ref);
  PERFORM paycron.emit('subscription_created', v_id, p_customer_id, NULL,
    jsonb_build_object('amount_minor', p_amount_minor, 'currency', p_currency,
                       'interval', p_interval_count || p_interval_unit, 'first_due_at', v_anchor));
  RETURN v_id;
END $$;

CREATE FUNCTION paycron.lock_subscription(p_id uuid) RETURNS paycron.subscriptions
LANGUAGE plpgsql AS $$
DECLARE
  v paycron.subscriptions;
BEGIN
  SELECT * INTO v FROM paycron.subscriptions WHERE id = p_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'subscription % is unknown', p_id USING ERRCODE = 'P0002';
  END IF;
  RETURN v;
END $$;

-- Cancels now (nothing more is billed) or at the end of the period already paid for.
CREATE FUNCTION paycron.cancel_subscription(p_id uuid, p_at_period_end boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v paycron.subscriptions := paycron.lock_subscription(p_id);
BEGIN
  IF v.status IN ('canceled', 'completed') THEN
    RETURN v.status;
  END IF;
  IF p_at_period_end AND v.status IN ('active', 'trialing') THEN
    UPDATE paycron.subscriptions SET cancel_at_period_end = true, updated_at = now() WHERE id = p_id;
    PERFORM paycron.emit('subscription_cancel_scheduled', p_id, v.customer_id, NULL,
                         jsonb_build_object('at', v.next_due_at));
    RETURN 'cancel_at_period_end';
  END IF;
  UPDATE paycron.subscriptions
     SET status = 'canceled', next_due_at = NULL, canceled_at = now(), updated_at = now()
   WHERE id = p_id;
  PERFORM paycron.emit('subscription_canceled', p_id, v.customer_id, NULL, jsonb_build_object('reason', 'requested'));
  RETURN 'canceled';
END $$;

CREATE FUNCTION paycron.pause_subscription(p_id uuid)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
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
  PERFORM paycron.emit('subscription_paused', p_id, v.customer_id, NULL, '{}');
  RETURN 'paused';
END $$;

-- Resumes a paused subscription. Periods that started during the pause are skipped, not billed:
-- the engine moves past every period starting before the resume when it next looks at it. A
-- subscription paused while past due resumes its dunning where it stood.
CREATE FUNCTION paycron.resume_subscription(p_id uuid)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v paycron.subscriptions := paycron.lock_subscription(p_id);
BEGIN
  IF v.status <> 'paused' THEN
    IF v.status IN ('active', 'trialing', 'past_due') THEN
      RETURN v.status;
    END IF;
    RAISE EXCEPTION 'subscription % is %, only a paused subscription can be resumed', p_id, v.status USING ERRCODE = '22023';
  END IF;
  UPDATE paycron.subscriptions
     SET status = CASE WHEN v.dunning_started_at IS NOT NULL THEN 'past_due' ELSE 'active' END,
         skip_before = CASE WHEN v.dunning_started_at IS NOT NULL THEN NULL ELSE now() END,
         updated_at = now()
   WHERE id = p_id;
  PERFORM paycron.emit('subscription_resumed', p_id, v.customer_id, NULL, '{}');
  RETURN 'resumed';
END $$;

-- Moves a subscription to another enabled card of the same customer. An unpaid or past-due
-- subscription is billed again at once with the new card (a new attempt, a new key).
CREATE FUNCTION paycron.change_card(p_id uuid, p_card_id text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v paycron.subscriptions := paycron.lock_subscription(p_id);
  v_card text := paycron.check_square_id('card_id', p_card_id, 64);
  v_owner text;
  v_enabled boolean;
BEGIN
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
  UPDATE paycron.subscriptions
     SET card_id = v_card,
         status = CASE WHEN v.status = 'unpaid' THEN 'past_due' ELSE v.status END,
         next_due_at = CASE WHEN v.status IN ('unpaid', 'past_due') THEN now() ELSE v.next_due_at END,
         updated_at = now()
   WHERE id = p_id;
  PERFORM paycron.emit('subscription_card_changed', p_id, v.customer_id, NULL, jsonb_build_object('card_id', v_card));
  RETURN 'changed';
END $$;

-- What the business's application may see of its subscriptions' history.
CREATE VIEW paycron.events_feed AS
  SELECT id, type, subscription_id, customer_id, charge_id, payload, created_at FROM paycron.events;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'paycron_app') THEN
    CREATE ROLE paycron_app NOLOGIN;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  -- Roles are cluster-wide: another database's migration created it at the same moment.
  NULL;
END $$;

REVOKE ALL ON ALL TABLES IN SCHEMA paycron FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA paycron FROM PUBLIC;
GRANT USAGE ON SCHEMA paycron TO paycron_app;
GRANT SELECT ON paycron.events_feed TO paycron_app;
GRANT EXECUTE ON FUNCTION
  paycron.upsert_customer_card(text, text, text, text, int, int, boolean),
  paycron.create_subscription(text, bigint, text, text, int, text, timestamptz, text, int, int, text, timestamptz),
  paycron.cancel_subscription(uuid, boolean),
  paycron.pause_subscription(uuid),
  paycron.resume_subscription(uuid),
  paycron.change_card(uuid, text),
  paycron.looks_like_card_number(text),
  paycron.check_square_id(text, text, int)
TO paycron_app;
