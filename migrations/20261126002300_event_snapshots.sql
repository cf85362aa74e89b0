-- A subscription's events carry a snapshot of the subscription as it is after the change (the
-- read API's shape, under "subscription"), written in the same transaction as the change.
CREATE FUNCTION paycron.snapshot_subscription() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.subscription_id IS NOT NULL AND NEW.type LIKE 'subscription\_%'
     AND NOT (NEW.payload ? 'subscription') THEN
    NEW.payload := NEW.payload || jsonb_build_object('subscription',
      (SELECT to_jsonb(s) FROM paycron.subscription_states(ARRAY[NEW.subscription_id]) s));
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER events_snapshot BEFORE INSERT ON paycron.events
  FOR EACH ROW EXECUTE FUNCTION paycron.snapshot_subscription();
