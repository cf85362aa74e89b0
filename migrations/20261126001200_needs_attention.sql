-- A subscription the engine cannot read or move (a hand-edited row, a value out of the engine's
-- range) is quarantined with the reason instead of failing every claim: billing goes on for
-- everyone else, and an operator fixes the row and releases it (`paycron subscription release`).
ALTER TABLE paycron.subscriptions ADD COLUMN needs_attention text;
CREATE INDEX subscriptions_needs_attention ON paycron.subscriptions (id) WHERE needs_attention IS NOT NULL;
