-- A charge's idempotency key is derived from its subscription, period and attempt (a counter
-- charge's from its subscription alone, and it is always period 0, attempt 1). The database
-- now checks that derivation instead of keeping a unique index of the keys: with (subscription,
-- period, attempt) already unique, a derived key is unique too, and every charge no longer adds
-- two entries (written, then rewritten when it resolves) to an index of 36-character strings.
ALTER TABLE paycron.charges ADD CONSTRAINT charges_key_derived CHECK (
  idempotency_key = replace(subscription_id::text, '-', '') || '-' ||
    CASE WHEN source = 'counter' THEN 'counter' ELSE period::text || '-' || attempt::text END
  AND (source <> 'counter' OR (period = 0 AND attempt = 1)));
ALTER TABLE paycron.charges DROP CONSTRAINT charges_idempotency_key_key;
