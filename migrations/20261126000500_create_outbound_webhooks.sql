-- Outbound webhooks: endpoints the business configures, one delivery per (endpoint, event),
-- and every delivery attempt. At-least-once: a delivery is retried with backoff until a 2xx or
-- until it is older than the configured maximum age; receivers de-duplicate by event id.
CREATE TABLE paycron.webhook_endpoints (
  id            uuid PRIMARY KEY,
  url           text NOT NULL CHECK (url ~ '^https?://[^[:space:]]+$'),
  secret        text NOT NULL CHECK (length(secret) >= 16),
  enabled       boolean NOT NULL DEFAULT true,
  -- Events after this id are fanned out to this endpoint.
  last_event_id bigint NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE paycron.webhook_deliveries (
  id              uuid PRIMARY KEY,
  endpoint_id     uuid NOT NULL REFERENCES paycron.webhook_endpoints (id),
  event_id        bigint NOT NULL REFERENCES paycron.events (id),
  status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
  attempts        int NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL,
  last_status     int,
  last_error      text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  delivered_at    timestamptz,
  UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON paycron.webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE paycron.webhook_attempts (
  id           bigserial PRIMARY KEY,
  delivery_id  uuid NOT NULL REFERENCES paycron.webhook_deliveries (id),
  attempted_at timestamptz NOT NULL,
  http_status  int,
  error        text,
  duration_ms  int NOT NULL
);
