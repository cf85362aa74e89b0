-- Each endpoint signs in one format: 'paycron' (Paycron-Signature: t=…,v1=<hex>, the scheme
-- Stripe's libraries verify) or 'standard' (Standard Webhooks: webhook-id, webhook-timestamp,
-- webhook-signature: v1,<base64>, keyed by the base64 part of a whsec_ secret).
ALTER TABLE paycron.webhook_endpoints
  ADD COLUMN signature_format text NOT NULL DEFAULT 'paycron'
    CHECK (signature_format IN ('paycron', 'standard'));
ALTER TABLE paycron.webhook_endpoints
  ADD CONSTRAINT webhook_endpoints_standard_secret
    CHECK (signature_format <> 'standard' OR secret ~ '^whsec_[A-Za-z0-9+/]{32,}={0,2}$');
