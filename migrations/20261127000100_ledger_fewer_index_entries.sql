-- Each recorded charge wrote eight index entries into the ledger: four for its entry and two for
-- each of its postings. Three of them kept nothing another index does not already keep.

-- 1. A posting is identified by its entry and account (an entry never posts twice to one
--    account: its postings are written together, one per side). That key is the primary key
--    and serves the lookups by entry; the surrogate id, its sequence and the separate index by
--    entry go.
ALTER TABLE paycron.ledger_postings DROP CONSTRAINT ledger_postings_pkey;
DROP INDEX paycron.ledger_postings_entry;
ALTER TABLE paycron.ledger_postings ADD PRIMARY KEY (entry_id, account);
ALTER TABLE paycron.ledger_postings DROP COLUMN id;

-- 2. One index over an entry's charge serves the lookups by charge and keeps one charge entry
--    per charge: charge entries have neither refund nor dispute, so NULLS NOT DISTINCT makes
--    (charge, 'charge', NULL, NULL) unique, while refund and dispute entries stay unique per
--    refund and per dispute and kind as before.
CREATE UNIQUE INDEX ledger_entries_by_charge ON paycron.ledger_entries
  (charge_id, kind, refund_id, dispute_id) NULLS NOT DISTINCT;
DROP INDEX paycron.ledger_entries_one_per_charge;
DROP INDEX paycron.ledger_entries_charge;
