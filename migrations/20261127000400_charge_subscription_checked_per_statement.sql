-- A charge's subscription is checked once per statement instead of once per row, as a ledger
-- entry's charge is. The foreign key queued an after-trigger per charge and ran a locking lookup
-- (FOR KEY SHARE) for each, on a subscription the claim has just locked FOR UPDATE anyway.
-- What it protected still holds:
--   * a charge names a subscription that exists: checked below, one primary-key probe each;
--   * a subscription is never deleted (it ends canceled or completed and keeps its history):
--     refused below, outright, so no charge being written can lose its subscription to a
--     delete that did not see it yet.
ALTER TABLE paycron.charges DROP CONSTRAINT charges_subscription_id_fkey;

CREATE FUNCTION paycron.check_charges_subscription() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  bad uuid;
BEGIN
  -- A scalar subquery, one primary-key probe per subscription (NOT EXISTS would be planned as
  -- an anti-join hashing every subscription, the transition table's size being unknown).
  SELECT n.subscription_id INTO bad
    FROM (SELECT DISTINCT subscription_id FROM new_rows) n
   WHERE (SELECT s.id FROM paycron.subscriptions s WHERE s.id = n.subscription_id) IS NULL
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'charge names subscription %, which does not exist', bad
      USING ERRCODE = 'foreign_key_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER charges_subscription_exists AFTER INSERT ON paycron.charges
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.check_charges_subscription();

CREATE FUNCTION paycron.keep_subscriptions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'subscriptions are never deleted: cancel one instead (paycron.cancel_subscription)'
    USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER subscriptions_never_deleted BEFORE DELETE ON paycron.subscriptions
  FOR EACH ROW EXECUTE FUNCTION paycron.keep_subscriptions();
CREATE TRIGGER subscriptions_no_truncate BEFORE TRUNCATE ON paycron.subscriptions
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.keep_subscriptions();
