-- The open intent of a subscription, on the subscription row itself. A claim checks it in the
-- row it locks, so a concurrent claimer whose snapshot predates another's claim re-reads it
-- (READ COMMITTED re-checks the locked row) and skips the subscription instead of colliding on
-- the intent's unique index.
ALTER TABLE paycron.subscriptions ADD COLUMN open_charge_id uuid;
-- Room on each page for the claim's update to stay a heap-only (HOT) update.
ALTER TABLE paycron.subscriptions SET (fillfactor = 70);
UPDATE paycron.subscriptions s SET open_charge_id = c.id
  FROM paycron.charges c WHERE c.subscription_id = s.id AND c.status = 'pending';
