-- A charge whose answer did not match it (amount, currency, customer, card, location or
-- reference), or whose payment could not be recorded (a payment id already recorded for another
-- charge), goes to review: neither a success nor a decline, never re-sent. Its subscription
-- keeps the charge open (nothing more is billed for it) until an operator decides with
-- `paycron charges resolve`, through the normal record path.
ALTER TABLE paycron.charges DROP CONSTRAINT charges_status_check;
ALTER TABLE paycron.charges ADD CONSTRAINT charges_status_check
  CHECK (status IN ('pending', 'succeeded', 'declined', 'failed', 'needs_review'));
ALTER TABLE paycron.charges
  ADD COLUMN review_reason    text,
  ADD COLUMN review_payment_id text,
  ADD COLUMN review_note      text,
  ADD COLUMN reviewed_at      timestamptz,
  ADD CONSTRAINT charges_review_reason CHECK ((status = 'needs_review') <= (review_reason IS NOT NULL));
CREATE INDEX charges_needs_review ON paycron.charges (created_at) WHERE status = 'needs_review';
-- A charge in review is still open for its period: no second intent while it is undecided.
DROP INDEX paycron.charges_one_pending_per_period;
CREATE UNIQUE INDEX charges_one_open_per_period ON paycron.charges (subscription_id, period)
  WHERE status IN ('pending', 'needs_review');
