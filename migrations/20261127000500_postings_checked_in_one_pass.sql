-- The postings check (a statement-level trigger on ledger_postings) makes one pass over the
-- statement's postings instead of three: per entry, the sum and currencies of its new postings,
-- and one probe that finds the entry and counts all its postings. The rules are unchanged: every
-- posting names an entry that exists, an entry's postings balance in one currency, and they are
-- all written by one statement (none added to an entry that has its own). Only when a rule is
-- broken is it worked out which one, for the error.
CREATE OR REPLACE FUNCTION paycron.check_postings_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  bad record;
BEGIN
  -- The stored count joins the entry: an entry that does not exist has no postings to count,
  -- so it is caught by the same comparison. (A scalar subquery, one primary-key probe per
  -- entry: a join would be planned for a transition table of unknown size, and hash the ledger.)
  SELECT n.entry_id, n.total, n.currencies INTO bad
    FROM (SELECT entry_id, sum(amount_minor) AS total, count(DISTINCT currency) AS currencies,
                 count(*) AS k
            FROM new_rows GROUP BY entry_id) n
   WHERE n.total <> 0 OR n.currencies > 1
      OR (SELECT count(*) FROM paycron.ledger_entries e JOIN paycron.ledger_postings p ON p.entry_id = e.id
           WHERE e.id = n.entry_id) <> n.k
   LIMIT 1;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF NOT EXISTS (SELECT FROM paycron.ledger_entries e WHERE e.id = bad.entry_id) THEN
    RAISE EXCEPTION 'ledger posting names entry %, which does not exist', bad.entry_id
      USING ERRCODE = 'foreign_key_violation';
  END IF;
  IF bad.total <> 0 OR bad.currencies > 1 THEN
    RAISE EXCEPTION 'ledger entry % postings do not balance (sum %, % currencies)', bad.entry_id, bad.total, bad.currencies
      USING ERRCODE = 'check_violation';
  END IF;
  RAISE EXCEPTION 'ledger entry % already has postings: an entry''s postings are written together', bad.entry_id
    USING ERRCODE = 'check_violation';
END $$;
