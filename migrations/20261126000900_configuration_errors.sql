-- Attempts Square refused for a configuration reason (the seller's location, currency, API
-- version or the request's shape) use a new idempotency key but no dunning retry: the lifecycle
-- counts them apart. Reset with the attempt number when the period moves on.
ALTER TABLE paycron.subscriptions
  ADD COLUMN uncounted_attempts int NOT NULL DEFAULT 0 CHECK (uncounted_attempts >= 0);
