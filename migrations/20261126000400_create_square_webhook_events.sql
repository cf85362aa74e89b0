-- Square webhook notifications received, de-duplicated by Square's event_id. The handling of
-- an event happens in the same transaction as this row, so a replay changes nothing.
CREATE TABLE paycron.square_webhook_events (
  event_id    text PRIMARY KEY,
  type        text NOT NULL,
  payload     jsonb NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now()
);
