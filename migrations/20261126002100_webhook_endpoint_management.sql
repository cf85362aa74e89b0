-- Endpoint management: an endpoint may take only some event types, be disabled and enabled,
-- removed (kept for its deliveries' history, never delivered to again), and have its secret
-- rotated: the previous secret signs beside the new one until previous_secret_until.
ALTER TABLE paycron.webhook_endpoints
  ADD COLUMN event_types text[] CHECK (event_types IS NULL OR cardinality(event_types) > 0),
  ADD COLUMN removed_at timestamptz,
  ADD COLUMN previous_secret text,
  ADD COLUMN previous_secret_until timestamptz,
  ADD CONSTRAINT webhook_endpoints_previous_secret
    CHECK ((previous_secret IS NULL) = (previous_secret_until IS NULL));
