//! Charges: one row per attempt, written as a durable `pending` charge before any call to
//! Square, and resolved exactly once.
//!
//! Fencing: a charge is resolved only by the worker whose `lease_owner` it carries, and only
//! while it is still `pending`; a worker whose lease was taken over gets `false` back and
//! records nothing. A lease is taken over when it expired (wall clock), or at once when its
//! owner no longer holds its session-level advisory lock (its process died and its connection
//! dropped).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Result;
use crate::domain::{CardId, ChargeId, CustomerId, IdempotencyKey, Money, SubscriptionId};

/// A new charge.
#[derive(Clone, Debug)]
pub struct NewCharge {
    /// Charge id (sent as `reference_id`).
    pub id: ChargeId,
    /// Subscription.
    pub subscription_id: SubscriptionId,
    /// Period index.
    pub period: i32,
    /// Period start.
    pub period_start: DateTime<Utc>,
    /// Attempt number.
    pub attempt: i32,
    /// Idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// Customer.
    pub customer_id: CustomerId,
    /// Card.
    pub card_id: CardId,
    /// Amount.
    pub money: Money,
    /// The exact CreatePayment body.
    pub request_body: String,
    /// SHA-256 of the body, hex.
    pub request_fingerprint: String,
}

/// A stored charge.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ChargeRow {
    /// Id.
    pub id: ChargeId,
    /// Subscription.
    pub subscription_id: SubscriptionId,
    /// Period index.
    pub period: i32,
    /// Period start.
    pub period_start: DateTime<Utc>,
    /// Attempt.
    pub attempt: i32,
    /// Key.
    pub idempotency_key: IdempotencyKey,
    /// Customer.
    pub customer_id: CustomerId,
    /// Card (none for the first period paid at the counter).
    pub card_id: Option<CardId>,
    /// Amount (`amount_minor`, `currency`).
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub money: Money,
    /// Status.
    pub status: crate::domain::ChargeStatus,
    /// Exact body.
    pub request_body: String,
    /// Body hash.
    pub request_fingerprint: String,
    /// Square payment id once known.
    pub provider_payment_id: Option<String>,
    /// Decline code.
    pub decline_code: Option<String>,
    /// Re-sends so far (the first send is not counted).
    pub sends: i32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// `card_on_file` (sent by paycron) or `counter` (paid in Square Point of Sale).
    pub source: String,
}

/// The `source` of a charge paycron sends itself (the other is `counter`: paid in Square Point
/// of Sale).
pub const SOURCE_CARD_ON_FILE: &str = "card_on_file";

pub(crate) const COLUMNS: &str = "id, subscription_id, period, period_start, attempt, idempotency_key, customer_id, card_id,
    amount_minor, currency, status, request_body, request_fingerprint, provider_payment_id, decline_code, sends, created_at, source";

/// The advisory-lock key of a worker, derived from its owner id (first 64 bits).
pub fn owner_lock_key(owner: Uuid) -> i64 {
    let b = owner.as_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Takes the session-level advisory lock that proves `owner` is alive, on a connection the
/// worker keeps open for its whole life.
///
/// # Errors
/// [`super::StoreError`].
pub async fn hold_owner_lock(conn: &mut PgConnection, owner: Uuid) -> Result<()> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(owner_lock_key(owner))
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the liveness lock of `owner` again on a new connection after the old one was lost;
/// false while the old session still holds it (the server has not noticed it is gone yet).
///
/// # Errors
/// [`super::StoreError`].
pub async fn retake_owner_lock(conn: &mut PgConnection, owner: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(owner_lock_key(owner))
        .fetch_one(conn)
        .await?)
}

/// One text column of `rows`, borrowed, as a statement's array parameter.
fn text<'a, T>(rows: &'a [T], f: impl Fn(&'a T) -> &'a str) -> Vec<&'a str> {
    rows.iter().map(f).collect()
}

/// Inserts charges in one statement, leased to `owner` until `locked_until`, and marks each
/// one its subscription's open charge; returns the rows actually inserted (what the engine
/// then sends): a pending charge that collides with one another worker already wrote (same
/// attempt, or an open charge for the period) is skipped, and marks nothing.
///
/// The rows are the charges given, as written: the statement returns only the ids inserted and
/// their creation time (the rest is what was sent, and defaults nothing else sets), so the
/// bodies are not read back.
///
/// # Errors
/// [`super::StoreError`].
pub async fn insert_charges(
    conn: &mut PgConnection,
    new: Vec<NewCharge>,
    owner: Uuid,
    locked_until: DateTime<Utc>,
) -> Result<Vec<ChargeRow>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let charges = new.as_slice();
    macro_rules! col {
        ($f:ident) => {
            charges.iter().map(|c| c.$f.clone()).collect::<Vec<_>>()
        };
    }
    let inserted: Vec<(ChargeId, DateTime<Utc>)> = sqlx::query_as(
        "WITH i AS (
         INSERT INTO paycron.charges (id, subscription_id, period, period_start, attempt, idempotency_key, customer_id,
                card_id, amount_minor, currency, status, request_body, request_fingerprint, lease_owner, locked_until)
         SELECT t.id, t.sub, t.period, t.ps, t.attempt, t.key, t.cust, t.card, t.amount, t.cur, 'pending', t.body, t.fp, $13, $14
           FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $4::timestamptz[], $5::int[], $6::text[], $7::text[],
                       $8::text[], $9::bigint[], $10::text[], $11::text[], $12::text[])
                AS t(id, sub, period, ps, attempt, key, cust, card, amount, cur, body, fp)
         ON CONFLICT DO NOTHING
         RETURNING id, subscription_id, created_at),
         opened AS (
         UPDATE paycron.subscriptions s SET open_charge_id = i.id FROM i WHERE s.id = i.subscription_id)
         SELECT id, created_at FROM i",
    )
    .bind(col!(id))
    .bind(col!(subscription_id))
    .bind(col!(period))
    .bind(col!(period_start))
    .bind(col!(attempt))
    // The text columns are bound by reference: the bodies alone would otherwise be copied once
    // more per charge.
    .bind(text(charges, |c| c.idempotency_key.as_str()))
    .bind(text(charges, |c| c.customer_id.as_str()))
    .bind(text(charges, |c| c.card_id.as_str()))
    .bind(charges.iter().map(|c| c.money.minor()).collect::<Vec<_>>())
    .bind(charges.iter().map(|c| c.money.currency()).collect::<Vec<_>>())
    .bind(text(charges, |c| c.request_body.as_str()))
    .bind(text(charges, |c| c.request_fingerprint.as_str()))
    .bind(owner)
    .bind(locked_until)
    .fetch_all(conn)
    .await?;
    let created: std::collections::HashMap<ChargeId, DateTime<Utc>> =
        inserted.into_iter().collect();
    Ok(new
        .into_iter()
        .filter_map(|c| {
            let created_at = *created.get(&c.id)?;
            Some(ChargeRow {
                id: c.id,
                subscription_id: c.subscription_id,
                period: c.period,
                period_start: c.period_start,
                attempt: c.attempt,
                idempotency_key: c.idempotency_key,
                customer_id: c.customer_id,
                card_id: Some(c.card_id),
                money: c.money,
                status: crate::domain::ChargeStatus::Pending,
                request_body: c.request_body,
                request_fingerprint: c.request_fingerprint,
                provider_payment_id: None,
                decline_code: None,
                sends: 0,
                created_at,
                source: SOURCE_CARD_ON_FILE.to_owned(),
            })
        })
        .collect())
}

/// Takes over up to `limit` pending charges nobody is working on: another owner's whose lease
/// expired by the wall clock or whose owner's advisory lock is no longer held, and this
/// owner's own whose lease expired (left open by an undecided answer), except the `busy` ones
/// it is working on right now. Oldest first.
///
/// # Errors
/// [`super::StoreError`].
pub async fn claim_orphans(
    conn: &mut PgConnection,
    wall_now: DateTime<Utc>,
    owner: Uuid,
    locked_until: DateTime<Utc>,
    limit: i64,
    busy: &[ChargeId],
) -> Result<Vec<ChargeRow>> {
    Ok(sqlx::query_as(sqlf!(
        "WITH orphan AS (
           SELECT c.id FROM paycron.charges c
            WHERE c.status = 'pending' AND c.id <> ALL($5)
              AND (c.locked_until IS NULL OR c.locked_until < $1 OR (c.lease_owner IS DISTINCT FROM $2 AND (c.lease_owner IS NULL OR NOT EXISTS (
                    SELECT 1 FROM pg_locks l
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND ((l.classid::int8 << 32) | l.objid::int8)
                           = ('x' || substr(replace(c.lease_owner::text, '-', ''), 1, 16))::bit(64)::int8))))
            ORDER BY c.created_at, c.id
            LIMIT $4
            FOR UPDATE SKIP LOCKED)
         UPDATE paycron.charges c SET lease_owner = $2, locked_until = $3
           FROM orphan WHERE c.id = orphan.id
         RETURNING {}",
        super::qualified(COLUMNS, "c")
    ))
    .bind(wall_now)
    .bind(owner)
    .bind(locked_until)
    .bind(limit)
    .bind(busy)
    .fetch_all(conn)
    .await?)
}

/// Puts off the recovery of charges whose answer was undecided: each stays leased to `owner`
/// until its given time (a backoff that grows with its re-sends), so an outage of Square does
/// not turn into a re-send a minute. A dead owner's charges are taken over at once regardless.
///
/// # Errors
/// [`super::StoreError`].
pub async fn defer(
    conn: &mut PgConnection,
    owner: Uuid,
    until: &[(ChargeId, DateTime<Utc>)],
) -> Result<()> {
    if until.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE paycron.charges c SET locked_until = t.until
           FROM UNNEST($2::uuid[], $3::timestamptz[]) AS t(id, until)
          WHERE c.id = t.id AND c.lease_owner = $1 AND c.status = 'pending'",
    )
    .bind(owner)
    .bind(until.iter().map(|u| u.0).collect::<Vec<_>>())
    .bind(until.iter().map(|u| u.1).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Pending charges this owner still holds (re-driven in-process after an unknown outcome).
///
/// # Errors
/// [`super::StoreError`].
pub async fn owned_pending(conn: &mut PgConnection, owner: Uuid) -> Result<Vec<ChargeRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.charges WHERE status = 'pending' AND lease_owner = $1 ORDER BY created_at, id"
    ))
    .bind(owner)
    .fetch_all(conn)
    .await?)
}

/// Extends `owner`'s lease on a charge before a (re-)send; false if the lease was lost.
///
/// # Errors
/// [`super::StoreError`].
pub async fn renew_lease(
    conn: &mut PgConnection,
    id: ChargeId,
    owner: Uuid,
    locked_until: DateTime<Utc>,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE paycron.charges SET locked_until = $3, sends = sends + 1
          WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
    )
    .bind(id)
    .bind(owner)
    .bind(locked_until)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Extends `owner`'s leases on the given pending charges (the heartbeat of a worker at work);
/// returns how many it still held.
///
/// # Errors
/// [`super::StoreError`].
pub async fn extend_leases(
    conn: &mut PgConnection,
    owner: Uuid,
    ids: &[ChargeId],
    locked_until: DateTime<Utc>,
) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE paycron.charges SET locked_until = $3
          WHERE id = ANY($2) AND lease_owner = $1 AND status = 'pending'",
    )
    .bind(owner)
    .bind(ids)
    .bind(locked_until)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Counts of charges by status.
///
/// # Errors
/// [`super::StoreError`].
pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT status, count(*) FROM paycron.charges GROUP BY status ORDER BY status",
    )
    .fetch_all(pool)
    .await?)
}

/// The charge whose id was sent as `reference_id`, if it is one of ours.
///
/// # Errors
/// [`super::StoreError`].
pub async fn get(conn: &mut PgConnection, id: ChargeId) -> Result<Option<ChargeRow>> {
    Ok(
        sqlx::query_as(sqlf!("SELECT {COLUMNS} FROM paycron.charges WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// The final outcome of one charge, owned (for batches).
#[derive(Clone, Debug)]
pub struct OwnedResolution {
    /// The charge.
    pub id: ChargeId,
    /// The status it must still have (`Pending`, or `NeedsReview` for an operator's decision).
    pub expected: crate::domain::ChargeStatus,
    /// The final status (never `Pending`).
    pub status: crate::domain::ChargeStatus,
    /// Square payment id (succeeded only).
    pub payment_id: Option<String>,
    /// Decline or error code.
    pub code: Option<String>,
    /// Square error category.
    pub category: Option<String>,
    /// Why the charge goes to review (`NeedsReview` only).
    pub review_reason: Option<String>,
    /// The payment Square answered with, for a charge in review.
    pub review_payment_id: Option<String>,
    /// The operator's note, for a decision on a charge in review.
    pub note: Option<String>,
}

impl OwnedResolution {
    /// `charge` as [`resolve_many`] left it, had this resolution been written.
    pub fn apply(&self, charge: &mut ChargeRow) {
        charge.status = self.status;
        charge.provider_payment_id.clone_from(&self.payment_id);
        charge.decline_code.clone_from(&self.code);
    }
}

/// Of the given Square payment ids, those already recorded, with the charge that holds each.
///
/// # Errors
/// [`super::StoreError`].
pub async fn payments_recorded(
    conn: &mut PgConnection,
    payment_ids: &[String],
) -> Result<std::collections::HashMap<String, ChargeId>> {
    if payment_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(String, ChargeId)> = sqlx::query_as(
        "SELECT provider_payment_id, id FROM paycron.charges WHERE provider_payment_id = ANY($1)",
    )
    .bind(payment_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Resolves many pending charges held by `owner` in one statement. Returns the ids this call
/// resolved; the others were fenced (no longer ours or no longer pending) and must not be
/// recorded. A resolved charge's row is the caller's with the resolution applied
/// ([`OwnedResolution::apply`]): the statement writes nothing else a [`ChargeRow`] holds.
///
/// The rows are visited in id order (the array is sorted, and the plan is a nested loop over
/// it), so two recorders whose sets overlap (a worker and the one that took some of its
/// charges over) normally lock in the same order; a deadlock, should a plan differ, is
/// retried by the caller. Locking is never what makes this safe: the fence is.
///
/// # Errors
/// [`super::StoreError`].
pub async fn resolve_many(
    conn: &mut PgConnection,
    owner: Uuid,
    items: &[OwnedResolution],
    wall_now: DateTime<Utc>,
) -> Result<Vec<ChargeId>> {
    if items.is_empty() {
        return Ok(vec![]);
    }
    let mut items: Vec<&OwnedResolution> = items.iter().collect();
    items.sort_by_key(|r| r.id);
    let ids: Vec<ChargeId> = items.iter().map(|r| r.id).collect();
    let statuses: Vec<crate::domain::ChargeStatus> = items.iter().map(|r| r.status).collect();
    let payments: Vec<Option<String>> = items.iter().map(|r| r.payment_id.clone()).collect();
    let codes: Vec<Option<String>> = items.iter().map(|r| r.code.clone()).collect();
    let categories: Vec<Option<String>> = items.iter().map(|r| r.category.clone()).collect();
    let expected: Vec<crate::domain::ChargeStatus> = items.iter().map(|r| r.expected).collect();
    let reasons: Vec<Option<String>> = items.iter().map(|r| r.review_reason.clone()).collect();
    let review_payments: Vec<Option<String>> =
        items.iter().map(|r| r.review_payment_id.clone()).collect();
    let notes: Vec<Option<String>> = items.iter().map(|r| r.note.clone()).collect();
    Ok(sqlx::query_scalar(
        // The fence compares the status with the state each outcome expects to find
        // (`pending`, from the array) rather than with a constant: a constant would let the
        // planner read the pending-charges index, whose dead entries (every charge resolved
        // since the last vacuum) it cannot see in its statistics, instead of the primary key.
        "UPDATE paycron.charges c
            SET status = r.status, provider_payment_id = r.payment_id, decline_code = r.code,
                decline_category = r.category, resolved_at = $7, locked_until = NULL,
                review_reason = coalesce(r.reason, c.review_reason),
                review_payment_id = coalesce(r.review_payment, c.review_payment_id),
                review_note = coalesce(r.note, c.review_note),
                reviewed_at = CASE WHEN c.status = 'needs_review' THEN $7 ELSE c.reviewed_at END
           FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $8::text[],
                       $9::text[], $10::text[], $11::text[])
                AS r(id, status, payment_id, code, category, expected, reason, review_payment, note)
          WHERE c.id = r.id AND c.lease_owner = $1 AND c.status = r.expected
          RETURNING c.id",
    )
    .bind(owner)
    .bind(ids)
    .bind(statuses)
    .bind(payments)
    .bind(codes)
    .bind(categories)
    .bind(wall_now)
    .bind(expected)
    .bind(reasons)
    .bind(review_payments)
    .bind(notes)
    .fetch_all(conn)
    .await?)
}

/// Withdraws charges this worker wrote but never sent (a drain at shutdown), returning
/// (subscription, charge) pairs: deleting an
/// charge no request was ever made for is the same as never having claimed it, and leaves the
/// subscription due for the next worker. Charges sent before (`sends > 0`) are kept.
///
/// # Errors
/// [`super::StoreError`].
pub async fn withdraw_unsent(
    conn: &mut PgConnection,
    owner: Uuid,
    ids: &[ChargeId],
) -> Result<Vec<(SubscriptionId, ChargeId)>> {
    Ok(sqlx::query_as(
        "DELETE FROM paycron.charges WHERE id = ANY($2) AND lease_owner = $1 AND status = 'pending' AND sends = 0
         RETURNING subscription_id, id",
    )
    .bind(owner)
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// Takes the lease of one pending charge for `owner` (reconcile's repair path). False when
/// the charge is not pending.
///
/// # Errors
/// [`super::StoreError`].
pub async fn take_lease(
    conn: &mut PgConnection,
    id: ChargeId,
    owner: Uuid,
    locked_until: DateTime<Utc>,
) -> Result<bool> {
    Ok(sqlx::query("UPDATE paycron.charges SET lease_owner = $2, locked_until = $3 WHERE id = $1 AND status = 'pending'")
        .bind(id)
        .bind(owner)
        .bind(locked_until)
        .execute(conn)
        .await?
        .rows_affected()
        == 1)
}

/// Charges created in `[since, until)` with their recorded outcome, for reconciliation.
///
/// # Errors
/// [`super::StoreError`].
pub async fn in_window(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<ChargeRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.charges WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at, id"
    ))
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await?)
}

/// The periods paid at the counter, by Square's payment id (a Point of Sale payment names no
/// charge: it is matched by its id).
///
/// # Errors
/// [`super::StoreError`].
pub async fn counter_payments(
    pool: &PgPool,
) -> Result<std::collections::HashMap<String, (SubscriptionId, i32)>> {
    let rows: Vec<(String, SubscriptionId, i32)> = sqlx::query_as(
        "SELECT provider_payment_id, subscription_id, period FROM paycron.charges
          WHERE source = 'counter' AND provider_payment_id IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(p, s, n)| (p, (s, n))).collect())
}

/// Charges by id (those a payment's `reference_id` names), whatever their age.
///
/// # Errors
/// [`super::StoreError`].
pub async fn by_ids(pool: &PgPool, ids: &[ChargeId]) -> Result<Vec<ChargeRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.charges WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// A charge in review, for `paycron charges review`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct InReview {
    /// The charge.
    pub charge_id: ChargeId,
    /// Its subscription.
    pub subscription_id: SubscriptionId,
    /// The customer.
    pub customer_id: CustomerId,
    /// The period's start.
    pub period_start: DateTime<Utc>,
    /// The attempt.
    pub attempt: i32,
    /// What was asked (`amount_minor`, `currency`).
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub money: Money,
    /// The payment Square answered with, if any.
    pub review_payment_id: Option<String>,
    /// The differences, or the recording conflict.
    pub review_reason: String,
    /// When the charge was written.
    pub created_at: DateTime<Utc>,
}

/// The charges in review, oldest first.
///
/// # Errors
/// [`super::StoreError`].
pub async fn in_review(pool: &PgPool) -> Result<Vec<InReview>> {
    Ok(sqlx::query_as(
        "SELECT id AS charge_id, subscription_id, customer_id, period_start, attempt, amount_minor, currency,
                review_payment_id, coalesce(review_reason, '') AS review_reason, created_at
           FROM paycron.charges WHERE status = 'needs_review' ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?)
}

/// The Square payment a charge in review was answered with, if any.
///
/// # Errors
/// [`super::StoreError`].
pub async fn review_payment(conn: &mut PgConnection, id: ChargeId) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT review_payment_id FROM paycron.charges WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

/// Takes a charge in review for `owner` (an operator's decision is recorded through the
/// fenced record path). False when it is no longer in review.
///
/// # Errors
/// [`super::StoreError`].
pub async fn take_review(
    conn: &mut PgConnection,
    id: ChargeId,
    owner: Uuid,
    locked_until: DateTime<Utc>,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE paycron.charges SET lease_owner = $2, locked_until = $3 WHERE id = $1 AND status = 'needs_review'",
    )
    .bind(id)
    .bind(owner)
    .bind(locked_until)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// The charges the given Square payments paid (payments paycron did not take are absent).
///
/// # Errors
/// [`super::StoreError`].
pub async fn ids_by_payment(
    pool: &PgPool,
    payment_ids: &[String],
) -> Result<std::collections::HashMap<String, ChargeId>> {
    let rows: Vec<(String, ChargeId)> = sqlx::query_as(
        "SELECT provider_payment_id, id FROM paycron.charges WHERE provider_payment_id = ANY($1)",
    )
    .bind(payment_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The pending charges recovery would take at `wall_now` (lease run out, or never leased),
/// read without locking (a dry run); a dead owner's unexpired lease is not seen here.
///
/// # Errors
/// [`super::StoreError`].
pub async fn peek_orphans(
    pool: &PgPool,
    wall_now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ChargeRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.charges
          WHERE status = 'pending' AND (locked_until IS NULL OR locked_until < $1)
          ORDER BY created_at, id LIMIT $2"
    ))
    .bind(wall_now)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
