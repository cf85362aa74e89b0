//! Customers and their cards on file: Square ids and display fields only (brand, last 4,
//! expiry). Writes go through `paycron.upsert_customer_card`, the same SQL function a
//! business's own application calls, so validation is identical on every path.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::Result;
use crate::domain::{CardId, CustomerId};

/// A card as a business or Square gives it to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardRecord {
    /// Square customer id.
    pub customer_id: String,
    /// Square card id.
    pub card_id: String,
    /// Square card brand, e.g. VISA.
    pub card_brand: Option<String>,
    /// Last four digits.
    pub last_4: Option<String>,
    /// Expiry month 1-12.
    pub exp_month: Option<i32>,
    /// Expiry year, four digits.
    pub exp_year: Option<i32>,
    /// Whether Square still lets it be charged.
    pub enabled: bool,
}

/// A stored customer.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct CustomerRow {
    /// Square customer id.
    pub id: String,
    /// Given name, if Square gave one.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Email.
    pub email_address: Option<String>,
    /// Cards on file (enabled or not).
    pub cards: i64,
    /// Subscriptions.
    pub subscriptions: i64,
}

/// A stored card.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct CardRow {
    /// Square card id.
    pub id: String,
    /// Owner.
    pub customer_id: String,
    /// Brand.
    pub card_brand: String,
    /// Last four digits.
    pub last_4: Option<String>,
    /// Expiry month.
    pub exp_month: Option<i32>,
    /// Expiry year.
    pub exp_year: Option<i32>,
    /// Chargeable, as far as Square says.
    pub enabled: bool,
    /// Past the end of its expiry month (UTC): never charged, never a fallback.
    pub expired: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What Square last said about a card, and when, locking the card's row so that concurrent
/// events for one card apply one at a time; `None` for a card not stored yet.
///
/// # Errors
/// [`super::StoreError`].
pub async fn lock_stamp(
    conn: &mut PgConnection,
    card_id: &str,
) -> Result<Option<crate::domain::card::CardStamp>> {
    let row: Option<(Option<i64>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT square_version, state_at FROM paycron.cards WHERE id = $1 FOR UPDATE",
    )
    .bind(card_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(version, at)| crate::domain::card::CardStamp { version, at }))
}

/// Records what Square last said about a card (after applying it).
///
/// # Errors
/// [`super::StoreError`].
pub async fn stamp(
    conn: &mut PgConnection,
    card_id: &str,
    stamp: crate::domain::card::CardStamp,
) -> Result<()> {
    sqlx::query(
        "UPDATE paycron.cards SET square_version = coalesce($2, square_version),
                state_at = CASE WHEN state_at IS NULL OR $3 > state_at THEN $3 ELSE state_at END
          WHERE id = $1",
    )
    .bind(card_id)
    .bind(stamp.version)
    .bind(stamp.at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts or updates a customer and card through the SQL API; true when the card changed.
///
/// # Errors
/// [`super::StoreError::Rejected`] with the SQL function's message for bad values.
pub async fn upsert_customer_card(conn: &mut PgConnection, card: &CardRecord) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT paycron.upsert_customer_card($1, $2, $3, $4, $5, $6, $7)")
            .bind(&card.customer_id)
            .bind(&card.card_id)
            .bind(&card.card_brand)
            .bind(&card.last_4)
            .bind(card.exp_month)
            .bind(card.exp_year)
            .bind(card.enabled)
            .fetch_one(conn)
            .await?,
    )
}

/// Inserts or updates a customer's profile fields (from Square's ListCustomers).
///
/// # Errors
/// [`super::StoreError`].
pub async fn upsert_customer(
    conn: &mut PgConnection,
    id: &str,
    given_name: Option<&str>,
    family_name: Option<&str>,
    email: Option<&str>,
) -> Result<bool> {
    let changed = sqlx::query(
        "INSERT INTO paycron.customers (id, given_name, family_name, email_address) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
                email_address = EXCLUDED.email_address, updated_at = now()
         WHERE (customers.given_name, customers.family_name, customers.email_address)
               IS DISTINCT FROM (EXCLUDED.given_name, EXCLUDED.family_name, EXCLUDED.email_address)",
    )
    .bind(id)
    .bind(given_name)
    .bind(family_name)
    .bind(email)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// Files a Square customer paycron has not seen yet (by id alone; sync-cards fills the rest).
///
/// # Errors
/// [`super::StoreError`] (an id that is not a customer id is `Rejected` by the table's check).
pub async fn file_customer(conn: &mut PgConnection, id: &str) -> Result<()> {
    sqlx::query("INSERT INTO paycron.customers (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Every customer with card and subscription counts, by id.
///
/// # Errors
/// [`super::StoreError`].
pub async fn list_customers(pool: &PgPool) -> Result<Vec<CustomerRow>> {
    Ok(sqlx::query_as(
        "SELECT c.id, c.given_name, c.family_name, c.email_address,
                (SELECT count(*) FROM paycron.cards k WHERE k.customer_id = c.id) AS cards,
                (SELECT count(*) FROM paycron.subscriptions s WHERE s.customer_id = c.id) AS subscriptions
           FROM paycron.customers c ORDER BY c.id",
    )
    .fetch_all(pool)
    .await?)
}

/// Every card, by customer then id.
///
/// # Errors
/// [`super::StoreError`].
pub async fn list_cards(pool: &PgPool) -> Result<Vec<CardRow>> {
    Ok(sqlx::query_as(
        "SELECT id, customer_id, card_brand, last_4, exp_month, exp_year, enabled,
                coalesce(exp_year * 12 + exp_month
                         < extract(year FROM now() AT TIME ZONE 'UTC')::int * 12
                           + extract(month FROM now() AT TIME ZONE 'UTC')::int, false) AS expired,
                updated_at
           FROM paycron.cards ORDER BY customer_id, id",
    )
    .fetch_all(pool)
    .await?)
}

/// Marks every card of `customer_id` not in `seen` as disabled (it vanished from Square).
/// Returns how many changed.
///
/// # Errors
/// [`super::StoreError`].
pub async fn disable_missing(
    conn: &mut PgConnection,
    customer_id: &str,
    seen: &[String],
) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE paycron.cards SET enabled = false, updated_at = now()
          WHERE customer_id = $1 AND enabled AND NOT (id = ANY($2))",
    )
    .bind(customer_id)
    .bind(seen)
    .execute(conn)
    .await?
    .rows_affected())
}

/// For each (customer, card to avoid), the customer's most recently updated other enabled card.
///
/// # Errors
/// [`super::StoreError`].
pub async fn other_enabled_cards(
    conn: &mut PgConnection,
    pairs: &[(CustomerId, CardId)],
    now: DateTime<Utc>,
) -> Result<std::collections::HashMap<(CustomerId, CardId), CardId>> {
    if pairs.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(CustomerId, CardId, CardId)> = sqlx::query_as(
        "SELECT DISTINCT ON (p.customer_id, p.except_id) p.customer_id, p.except_id, k.id
           FROM UNNEST($1::text[], $2::text[]) AS p(customer_id, except_id)
           JOIN paycron.cards k ON k.customer_id = p.customer_id AND k.id <> p.except_id AND k.enabled
                AND NOT coalesce(k.exp_year * 12 + k.exp_month
                                 < extract(year FROM $3 AT TIME ZONE 'UTC')::int * 12
                                   + extract(month FROM $3 AT TIME ZONE 'UTC')::int, false)
          ORDER BY p.customer_id, p.except_id, k.updated_at DESC, k.id",
    )
    .bind(pairs.iter().map(|p| p.0.clone()).collect::<Vec<_>>())
    .bind(pairs.iter().map(|p| p.1.clone()).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(c, e, k)| ((c, e), k)).collect())
}

/// Chargeability of cards: (enabled, exp_month, exp_year) by id.
///
/// # Errors
/// [`super::StoreError`].
pub async fn health(
    conn: &mut PgConnection,
    ids: &[CardId],
) -> Result<std::collections::HashMap<CardId, (bool, Option<i32>, Option<i32>)>> {
    let rows: Vec<(CardId, bool, Option<i32>, Option<i32>)> =
        // A join on the ids (one primary-key probe each) rather than `id = ANY($1)`, which the
        // planner answers with a scan of the whole table once the array is long.
        sqlx::query_as(
            "SELECT c.id, c.enabled AND NOT c.forgotten, c.exp_month, c.exp_year
               FROM (SELECT DISTINCT id FROM UNNEST($1::text[]) AS k(id)) k
               JOIN paycron.cards c ON c.id = k.id",
        )
            .bind(ids)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, e, m, y)| (id, (e, m, y)))
        .collect())
}

/// Emits `card_expiring` once per card and expiry for cards of live subscriptions that expire
/// (end of their expiry month, UTC) before `now + lead`. Returns how many were emitted.
///
/// # Errors
/// [`super::StoreError`].
pub async fn emit_expiring(
    conn: &mut PgConnection,
    now: chrono::DateTime<chrono::Utc>,
    lead_days: i32,
) -> Result<u64> {
    Ok(sqlx::query(
        "WITH expiring AS (
           SELECT DISTINCT k.id, k.customer_id, k.exp_month, k.exp_year,
                  (make_date(k.exp_year, k.exp_month, 1) + interval '1 month')::timestamp AT TIME ZONE 'UTC' AS expires_at
             FROM paycron.cards k
             JOIN paycron.subscriptions s ON s.card_id = k.id
                  AND s.status IN ('trialing', 'active', 'past_due')
            WHERE k.enabled AND k.exp_month IS NOT NULL AND k.exp_year IS NOT NULL
              AND (make_date(k.exp_year, k.exp_month, 1) + interval '1 month')::timestamp AT TIME ZONE 'UTC'
                  <= $1 + make_interval(days => $2))
         INSERT INTO paycron.events (type, customer_id, payload)
         SELECT 'card_expiring', e.customer_id,
                jsonb_build_object('card_id', e.id, 'exp_month', e.exp_month, 'exp_year', e.exp_year, 'expires_at', e.expires_at)
           FROM expiring e
          WHERE NOT EXISTS (SELECT 1 FROM paycron.events v
                             WHERE v.type = 'card_expiring' AND v.payload->>'card_id' = e.id
                               AND (v.payload->>'exp_year')::int = e.exp_year AND (v.payload->>'exp_month')::int = e.exp_month)",
    )
    .bind(now)
    .bind(lead_days)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Whether each of a customer's cards is enabled, by id.
///
/// # Errors
/// [`super::StoreError`].
pub async fn enabled_states(
    conn: &mut PgConnection,
    customer_id: &str,
) -> Result<std::collections::HashMap<String, bool>> {
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT id, enabled FROM paycron.cards WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}
