-- A gap-free events feed. Event ids come from a sequence at insert, not at commit, so with
-- concurrent writers a lower id can become visible after a higher one, and a reader that
-- remembers "the last id I saw" skips it for good. Consumers read `paycron.event_feed`
-- instead, in `position` order: positions are assigned after commit by one publisher at a
-- time (`paycron.publish_events()`, serialized on the `event_publisher` row), only to events
-- whose writing transaction is older than every transaction still in progress, so no event can
-- later appear below a position already handed out.
ALTER TABLE paycron.events ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_txid ON paycron.events (txid);

CREATE TABLE paycron.event_feed (
  position bigint PRIMARY KEY,
  event_id bigint NOT NULL UNIQUE REFERENCES paycron.events (id)
);
CREATE TRIGGER event_feed_append_only BEFORE UPDATE OR DELETE ON paycron.event_feed
  FOR EACH ROW EXECUTE FUNCTION paycron.refuse_change();

-- Every event written by a transaction below `done_below` has its position.
CREATE TABLE paycron.event_publisher (
  singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  done_below xid8 NOT NULL
);
INSERT INTO paycron.event_publisher (done_below) VALUES ('0');

-- Gives positions to the events that became final since the last call; returns how many.
-- Cheap when there is nothing new; safe to call from any number of sessions at once.
CREATE FUNCTION paycron.publish_events() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = paycron, pg_temp AS $$
DECLARE
  v_below xid8 := pg_snapshot_xmin(pg_current_snapshot());
  v_from xid8;
  v_last bigint;
  v_count bigint;
BEGIN
  SELECT done_below INTO v_from FROM paycron.event_publisher FOR UPDATE;
  IF v_below <= v_from THEN
    RETURN 0;
  END IF;
  SELECT coalesce(max(position), 0) INTO v_last FROM paycron.event_feed;
  INSERT INTO paycron.event_feed (position, event_id)
  SELECT v_last + row_number() OVER (ORDER BY e.txid, e.id), e.id
    FROM paycron.events e
   WHERE e.txid >= v_from AND e.txid < v_below;
  GET DIAGNOSTICS v_count = ROW_COUNT;
  UPDATE paycron.event_publisher SET done_below = v_below;
  RETURN v_count;
END $$;

-- Outbound webhooks follow positions; an endpoint keeps the events it already had (the first
-- publish numbers the events written so far in id order).
ALTER TABLE paycron.webhook_endpoints ADD COLUMN last_position bigint;
UPDATE paycron.webhook_endpoints w
   SET last_position = (SELECT count(*) FROM paycron.events e WHERE e.id <= w.last_event_id);
ALTER TABLE paycron.webhook_endpoints ALTER COLUMN last_position SET NOT NULL;
ALTER TABLE paycron.webhook_endpoints ALTER COLUMN last_event_id DROP NOT NULL;

-- The business's feed, in position order.
DROP VIEW paycron.events_feed;
CREATE VIEW paycron.events_feed AS
  SELECT f.position, e.id, e.type, e.subscription_id, e.customer_id, e.charge_id, e.payload, e.created_at
    FROM paycron.event_feed f JOIN paycron.events e ON e.id = f.event_id;
GRANT SELECT ON paycron.events_feed TO paycron_app;
REVOKE ALL ON FUNCTION paycron.publish_events() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION paycron.publish_events() TO paycron_app;

-- Append-only means no TRUNCATE either (a TRUNCATE ... CASCADE used to empty the events and,
-- through them, the webhook tables).
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON paycron.events
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.refuse_change();
CREATE TRIGGER event_feed_no_truncate BEFORE TRUNCATE ON paycron.event_feed
  FOR EACH STATEMENT EXECUTE FUNCTION paycron.refuse_change();
