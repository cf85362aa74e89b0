-- The claim reads due subscriptions in (next_due_at, id) order and stops at its batch size.
-- With the index on next_due_at alone, every subscription sharing a due instant (a whole
-- customer base billed on the 1st at midnight) had to be read and sorted on each claim.
DROP INDEX paycron.subscriptions_due;
CREATE INDEX subscriptions_due ON paycron.subscriptions (next_due_at, id)
  WHERE status IN ('trialing', 'active', 'past_due') AND next_due_at IS NOT NULL;
