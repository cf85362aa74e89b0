//! The state of a sync-cards run over Square's whole card listing: the run in progress
//! (`paycron.sync_runs`), each listing's cursor, and which run and end saw each card
//! (`cards.listed_run`, `cards.listed_from`).
//!
//! Invariants:
//! - a listing's cursor is saved in the transaction that files the page before it, so a run
//!   stopped anywhere resumes after the last page it filed, never skipping one;
//! - a card is disabled as gone from Square only at the end of a run in which neither end of
//!   the listing saw it, and only if nothing newer than the run's start (a webhook, a counter
//!   enrollment, a one-customer sync) spoke of it;
//! - every transaction of a run takes the customer rows it writes in one pass in ascending id
//!   (byte) order before any card row, then cards in ascending id order, so the listings filing
//!   pages side by side cannot deadlock one another (a transaction that later re-touched a
//!   customer another had changed meanwhile could).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Result;
use crate::domain::card::CardStamp;

/// One of a run's listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// ListCustomers (profile fields).
    Customers,
    /// ListCards, oldest card first.
    Oldest,
    /// ListCards, newest card first.
    Newest,
}

impl Listing {
    /// The value of `cards.listed_from` this listing writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Listing::Customers => "customers",
            Listing::Oldest => "oldest",
            Listing::Newest => "newest",
        }
    }
}

/// Where one listing stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListingState {
    /// Square's cursor of the next page to read (`None`: the first page, unless done).
    pub cursor: Option<String>,
    /// Read to its end, or met the other end.
    pub done: bool,
}

/// The run in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRun {
    /// The run's id, kept across resumptions.
    pub run_id: Uuid,
    /// When it began (the line between "seen before" and "spoken of since").
    pub started_at: DateTime<Utc>,
    /// Whether this picks up a run stopped earlier.
    pub resumed: bool,
    /// ListCustomers.
    pub customers: ListingState,
    /// ListCards oldest first.
    pub oldest: ListingState,
    /// ListCards newest first.
    pub newest: ListingState,
}

impl SyncRun {
    /// The state of `listing`.
    pub fn listing(&self, listing: Listing) -> &ListingState {
        match listing {
            Listing::Customers => &self.customers,
            Listing::Oldest => &self.oldest,
            Listing::Newest => &self.newest,
        }
    }
}

type RunRow = (
    Uuid,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
    bool,
    Option<String>,
    bool,
    Option<String>,
    bool,
);

/// The unfinished run that filed a page within `max_idle` of `now`, or a new one begun at
/// `now`.
///
/// # Errors
/// [`super::StoreError`].
pub async fn begin_or_resume(
    pool: &PgPool,
    now: DateTime<Utc>,
    max_idle: chrono::Duration,
) -> Result<SyncRun> {
    let mut tx = super::begin(pool).await?;
    let row: Option<RunRow> = sqlx::query_as(
        "SELECT run_id, started_at, touched_at, finished_at, customers_cursor, customers_done,
                oldest_cursor, oldest_done, newest_cursor, newest_done
           FROM paycron.sync_runs WHERE name = 'cards' FOR UPDATE",
    )
    .fetch_optional(&mut *tx)
    .await?;
    // Only a filed page touches the run: a run that cannot get past its cursor (Square no
    // longer accepts it) stops being resumed an hour after its last progress, however often
    // it is retried.
    if let Some((run_id, started_at, touched_at, None, cc, cd, oc, od, nc, nd)) = row
        && touched_at > now - max_idle
    {
        tx.commit().await?;
        return Ok(SyncRun {
            run_id,
            started_at,
            resumed: true,
            customers: ListingState {
                cursor: cc,
                done: cd,
            },
            oldest: ListingState {
                cursor: oc,
                done: od,
            },
            newest: ListingState {
                cursor: nc,
                done: nd,
            },
        });
    }
    let run_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO paycron.sync_runs (name, run_id, started_at, touched_at) VALUES ('cards', $1, $2, $2)
         ON CONFLICT (name) DO UPDATE SET run_id = EXCLUDED.run_id, started_at = EXCLUDED.started_at,
                touched_at = EXCLUDED.touched_at, finished_at = NULL,
                customers_cursor = NULL, customers_done = false, oldest_cursor = NULL,
                oldest_done = false, newest_cursor = NULL, newest_done = false",
    )
    .bind(run_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(SyncRun {
        run_id,
        started_at: now,
        resumed: false,
        customers: ListingState::default(),
        oldest: ListingState::default(),
        newest: ListingState::default(),
    })
}

/// Saves where `listing` stands after a page, in the page's transaction. False when the run is
/// no longer the current one (it went idle and another process began a new run): the caller
/// rolls back.
///
/// # Errors
/// [`super::StoreError`].
pub async fn save_listing(
    conn: &mut PgConnection,
    run_id: Uuid,
    listing: Listing,
    state: &ListingState,
) -> Result<bool> {
    let sql = match listing {
        Listing::Customers => {
            "UPDATE paycron.sync_runs SET customers_cursor = $2, customers_done = $3, touched_at = now()
              WHERE name = 'cards' AND run_id = $1 AND finished_at IS NULL"
        }
        Listing::Oldest => {
            "UPDATE paycron.sync_runs SET oldest_cursor = $2, oldest_done = $3, touched_at = now()
              WHERE name = 'cards' AND run_id = $1 AND finished_at IS NULL"
        }
        Listing::Newest => {
            "UPDATE paycron.sync_runs SET newest_cursor = $2, newest_done = $3, touched_at = now()
              WHERE name = 'cards' AND run_id = $1 AND finished_at IS NULL"
        }
    };
    Ok(sqlx::query(sql)
        .bind(run_id)
        .bind(&state.cursor)
        .bind(state.done)
        .execute(conn)
        .await?
        .rows_affected()
        == 1)
}

/// Takes the customers a page of cards belongs to, in one pass in ascending id order
/// (byte order, as the customers listing sorts its page): each is filed by id alone if new,
/// else locked, so that no other transaction can change it before this one ends and the card
/// writes after it never wait on a customer row. Ids the table's check would refuse are
/// skipped so that one odd id cannot fail the page (its card is then refused by the SQL API).
///
/// # Errors
/// [`super::StoreError`].
pub async fn take_customers(conn: &mut PgConnection, ids: &[String]) -> Result<()> {
    // `DO UPDATE ... WHERE false` updates nothing but locks each existing row as it goes
    // (`DO NOTHING` would not), in the order the rows come.
    sqlx::query(
        "INSERT INTO paycron.customers (id)
         SELECT DISTINCT t.id COLLATE \"C\" FROM unnest($1::text[]) AS t(id)
          WHERE length(t.id) BETWEEN 1 AND 191 AND NOT paycron.looks_like_card_number(t.id)
          ORDER BY 1
         ON CONFLICT (id) DO UPDATE SET updated_at = customers.updated_at WHERE false",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the other end of the listing already saw any of `ids` in this run: the two ends
/// have met, and this end can stop after this page.
///
/// # Errors
/// [`super::StoreError`].
pub async fn met_other_end(
    conn: &mut PgConnection,
    run_id: Uuid,
    from: Listing,
    ids: &[String],
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM paycron.cards
                         WHERE id = ANY($1) AND listed_run = $2 AND listed_from <> $3)",
    )
    .bind(ids)
    .bind(run_id)
    .bind(from.as_str())
    .fetch_one(conn)
    .await?)
}

/// Records that this run saw `ids` from the `from` end (a card already seen by the other end
/// keeps that mark: it is where the ends met). Returns how many this run had not seen yet.
///
/// # Errors
/// [`super::StoreError`].
pub async fn mark_listed(
    conn: &mut PgConnection,
    run_id: Uuid,
    from: Listing,
    ids: &[String],
) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE paycron.cards SET listed_run = $2, listed_from = $3
          WHERE id = ANY($1) AND listed_run IS DISTINCT FROM $2",
    )
    .bind(ids)
    .bind(run_id)
    .bind(from.as_str())
    .execute(conn)
    .await?
    .rows_affected())
}

/// A stored card as the listing compares it: owner, whether it is chargeable, and what Square
/// last said of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCard {
    /// Its customer here.
    pub customer_id: String,
    /// Chargeable.
    pub enabled: bool,
    /// Square's last word on it.
    pub stamp: CardStamp,
}

type CardRow = (String, bool, Option<i64>, Option<DateTime<Utc>>);

/// The stored card `card_id`, its row locked until the transaction ends; `None` when new.
///
/// # Errors
/// [`super::StoreError`].
pub async fn lock_card(conn: &mut PgConnection, card_id: &str) -> Result<Option<StoredCard>> {
    let row: Option<CardRow> = sqlx::query_as(
        "SELECT customer_id, enabled, square_version, state_at FROM paycron.cards WHERE id = $1 FOR UPDATE",
    )
    .bind(card_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(customer_id, enabled, version, at)| StoredCard {
        customer_id,
        enabled,
        stamp: CardStamp { version, at },
    }))
}

/// How many enabled cards this run did not see that were on file before it began and that
/// nothing has spoken of since, and how many cards are enabled in all.
///
/// # Errors
/// [`super::StoreError`].
pub async fn count_unlisted(conn: &mut PgConnection, run: &SyncRun) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE listed_run IS DISTINCT FROM $1 AND created_at < $2
                                   AND (state_at IS NULL OR state_at < $2)),
                count(*)
           FROM paycron.cards WHERE enabled",
    )
    .bind(run.run_id)
    .bind(run.started_at)
    .fetch_one(conn)
    .await?)
}

/// Disables the cards [`count_unlisted`] counts, returning (card, customer) of each.
///
/// # Errors
/// [`super::StoreError`].
pub async fn disable_unlisted(
    conn: &mut PgConnection,
    run: &SyncRun,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "UPDATE paycron.cards SET enabled = false, updated_at = now()
          WHERE enabled AND listed_run IS DISTINCT FROM $1 AND created_at < $2
            AND (state_at IS NULL OR state_at < $2)
         RETURNING id, customer_id",
    )
    .bind(run.run_id)
    .bind(run.started_at)
    .fetch_all(conn)
    .await?)
}

/// Ends the run: the next sync begins a new one. False when it was not the current run.
///
/// # Errors
/// [`super::StoreError`].
pub async fn finish(conn: &mut PgConnection, run_id: Uuid) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE paycron.sync_runs SET finished_at = now(), touched_at = now()
          WHERE name = 'cards' AND run_id = $1 AND finished_at IS NULL",
    )
    .bind(run_id)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}
