-- Every instant the engine reads is finite and within the calendar's range: `infinity` in a
-- row cannot even be decoded, and one such row used to stop every claim. The SQL API refuses
-- non-finite input already (`check_instant`); these constraints hold hand-written rows to the
-- same rule. Rows written before are normalized first: +infinity in an optional instant means
-- the same as NULL there (no end, nothing due, no trial); anything else non-finite is
-- quarantined with its value cleared so the row stays readable.
UPDATE paycron.subscriptions SET ends_at = NULL WHERE ends_at = 'infinity';
UPDATE paycron.subscriptions SET next_due_at = NULL WHERE next_due_at = 'infinity';
UPDATE paycron.subscriptions SET trial_ends_at = NULL WHERE trial_ends_at = 'infinity';
UPDATE paycron.subscriptions
   SET needs_attention = coalesce(needs_attention, 'a non-finite instant was written by hand and cleared; check the row'),
       ends_at = CASE WHEN isfinite(ends_at) THEN ends_at END,
       next_due_at = CASE WHEN isfinite(next_due_at) THEN next_due_at END,
       trial_ends_at = CASE WHEN isfinite(trial_ends_at) THEN trial_ends_at END,
       dunning_started_at = CASE WHEN isfinite(dunning_started_at) THEN dunning_started_at END,
       skip_before = CASE WHEN isfinite(skip_before) THEN skip_before END,
       canceled_at = CASE WHEN isfinite(canceled_at) THEN canceled_at END,
       anchor = CASE WHEN isfinite(anchor) THEN anchor ELSE created_at END
 WHERE NOT (isfinite(anchor) AND coalesce(isfinite(ends_at), true) AND coalesce(isfinite(next_due_at), true)
            AND coalesce(isfinite(trial_ends_at), true) AND coalesce(isfinite(dunning_started_at), true)
            AND coalesce(isfinite(skip_before), true) AND coalesce(isfinite(canceled_at), true));
ALTER TABLE paycron.subscriptions ADD CONSTRAINT subscriptions_finite_instants CHECK (
  isfinite(anchor) AND isfinite(ends_at) AND isfinite(next_due_at) AND isfinite(trial_ends_at)
  AND isfinite(dunning_started_at) AND isfinite(skip_before) AND isfinite(canceled_at));
