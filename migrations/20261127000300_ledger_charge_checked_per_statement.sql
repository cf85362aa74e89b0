-- A ledger entry's charge is checked once per statement instead of once per row, as a
-- posting's entry already is. The foreign key ran a locking lookup (FOR KEY SHARE, itself
-- written to the WAL) for every entry. What it protected still holds:
--   * an entry names a charge that exists: checked below, one primary-key probe per charge;
--   * a charge in the ledger is never deleted: refused below. The only charges paycron deletes
--     are its own pending ones never sent, which have no entry; a charge being resolved is
--     locked by the UPDATE that resolves it, so no delete can slip between that and its entry.
ALTER TABLE paycron.ledger_entries DROP CONSTRAINT ledger_entries_charge_id_fkey;

CREATE FUNCTION paycron.check_entries_charge() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  bad uuid;
BEGIN
  -- A scalar subquery, one primary-key probe per charge (NOT EXISTS would be planned as an
  -- anti-join hashing every charge, the transition table's size being unknown).
  SELECT n.charge_id INTO bad
    FROM (SELECT DISTINCT charge_id FROM new_rows) n
   WHERE (SELECT c.id FROM paycron.charges c WHERE c.id = n.charge_id) IS NULL
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'ledger entry names charge %, which does not exist', bad
      USING ERRCODE = 'foreign_key_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER ledger_entries_charge_exists AFTER INSERT ON paycron.ledger_entries
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.check_entries_charge();

CREATE FUNCTION paycron.keep_booked_charge() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM paycron.ledger_entries e WHERE e.charge_id = OLD.id) THEN
    RAISE EXCEPTION 'charge % is in the ledger and cannot be deleted', OLD.id
      USING ERRCODE = 'foreign_key_violation';
  END IF;
  RETURN OLD;
END $$;
CREATE TRIGGER charges_keep_booked BEFORE DELETE ON paycron.charges
  FOR EACH ROW EXECUTE FUNCTION paycron.keep_booked_charge();
