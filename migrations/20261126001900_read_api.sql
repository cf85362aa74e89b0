-- The read side of the SQL API: what an application may ask about its subscriptions without any
-- table access (the functions run as their owner; paycron_app may only call them).

-- A subscription as the business sees it: its plan, its card (display fields only), where
-- billing stands, and its own reference.
CREATE TYPE paycron.subscription_state AS (
  id uuid, customer_id text, status text, amount_minor bigint, currency text,
  interval_unit text, interval_count int, time_zone text, anchor timestamptz,
  card_id text, card_brand text, card_last_4 text, card_exp_month int, card_exp_year int,
  -- the latest period with a charge (paid, declined or in progress); NULL before the first
  current_period int,
  -- the next period to bill and when (NULL when nothing more will be billed)
  next_period int, next_charge_at timestamptz,
  -- declines so far of the period being retried (past_due), else 0
  dunning_step int,
  cancel_at_period_end boolean, trial_ends_at timestamptz, cycles int, ends_at timestamptz,
  external_ref text, created_at timestamptz, canceled_at timestamptz);

CREATE FUNCTION paycron.subscription_states(p_ids uuid[])
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
         s.external_ref, s.created_at, s.canceled_at
    FROM paycron.subscriptions s LEFT JOIN paycron.cards k ON k.id = s.card_id
   WHERE s.id = ANY(p_ids)
   ORDER BY s.created_at, s.id
$$;

-- One subscription by id (no row when unknown).
CREATE FUNCTION paycron.subscription(p_id uuid)
RETURNS SETOF paycron.subscription_state
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
  SELECT * FROM paycron.subscription_states(ARRAY[p_id])
$$;

-- The subscription created with this external reference (no row when none).
CREATE FUNCTION paycron.subscription_by_ref(p_external_ref text)
RETURNS SETOF paycron.subscription_state
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
  SELECT * FROM paycron.subscription_states(
    ARRAY(SELECT id FROM paycron.subscriptions WHERE external_ref = p_external_ref))
$$;

-- A customer's subscriptions, oldest first.
CREATE FUNCTION paycron.customer_subscriptions(p_customer_id text)
RETURNS SETOF paycron.subscription_state
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
  SELECT * FROM paycron.subscription_states(
    ARRAY(SELECT id FROM paycron.subscriptions WHERE customer_id = p_customer_id))
$$;

-- A subscription's charges, oldest first, with their recorded outcome (or pending / in review).
CREATE FUNCTION paycron.subscription_charges(p_id uuid)
RETURNS TABLE (charge_id uuid, period int, period_start timestamptz, attempt int, status text,
               amount_minor bigint, currency text, decline_code text, provider_payment_id text,
               recorded_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
  SELECT c.id, c.period, c.period_start, c.attempt, c.status, c.amount_minor, c.currency,
         coalesce(e.decline_code, c.decline_code), c.provider_payment_id,
         coalesce(e.recorded_at, c.resolved_at)
    FROM paycron.charges c
    LEFT JOIN paycron.ledger_entries e ON e.charge_id = c.id AND e.kind = 'charge'
   WHERE c.subscription_id = p_id
   ORDER BY c.period, c.attempt
$$;

REVOKE ALL ON FUNCTION paycron.subscription_states(uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION paycron.subscription(uuid), paycron.subscription_by_ref(text),
  paycron.customer_subscriptions(text), paycron.subscription_charges(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION paycron.subscription(uuid), paycron.subscription_by_ref(text),
  paycron.customer_subscriptions(text), paycron.subscription_charges(uuid) TO paycron_app;
