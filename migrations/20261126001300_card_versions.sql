-- What Square last said about a card and when: its `Card.version` and the event's time. A card
-- event or a listing older than that is recorded and ignored, so a late `card.updated` cannot
-- re-enable a card a newer `card.disabled` turned off.
ALTER TABLE paycron.cards
  ADD COLUMN square_version bigint,
  ADD COLUMN state_at timestamptz;
