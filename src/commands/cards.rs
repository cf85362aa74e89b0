//! `cards import|list` and `customers list`: the cards on file paycron knows.
//!
//! An import is parsed whole into domain types first (one clear line naming the file, line and
//! field on a bad value), then written in one transaction, so a bad file writes nothing.

use std::path::{Path, PathBuf};

use super::{CommandError, Format, Result, print_rows, table};
use crate::app::App;
use crate::domain::{CardId, CustomerId};
use crate::store::StoreError;
use crate::store::cards::{self, CardRecord};

/// `paycron cards ...`.
#[derive(clap::Subcommand)]
pub enum CardsCmd {
    /// Import ids a business already stored: customer_id,card_id,card_brand,last_4,exp_month,exp_year.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// List stored cards.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

/// `paycron customers ...`.
#[derive(clap::Subcommand)]
pub enum CustomersCmd {
    /// List stored customers.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

impl CardsCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, app: &App) -> Result<()> {
        match self {
            CardsCmd::Import { file } => import_cards(app, &file)
                .await
                .and_then(|n| crate::out!("imported {n} cards")),
            CardsCmd::List { format } => list_cards(app, format).await,
        }
    }
}

impl CustomersCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, app: &App) -> Result<()> {
        match self {
            CustomersCmd::List { format } => list_customers(app, format).await,
        }
    }
}

const IMPORT_COLUMNS: [&str; 6] = [
    "customer_id",
    "card_id",
    "card_brand",
    "last_4",
    "exp_month",
    "exp_year",
];

fn parse_import_row(
    rec: &csv::StringRecord,
    idx: &[usize; 6],
) -> std::result::Result<CardRecord, String> {
    let get = |i: usize| rec.get(idx[i]).map(str::trim).unwrap_or("");
    let customer: CustomerId = get(0)
        .parse()
        .map_err(|e: crate::domain::ids::IdError| e.to_string())?;
    let card: CardId = get(1)
        .parse()
        .map_err(|e: crate::domain::ids::IdError| e.to_string())?;
    let brand = get(2);
    if !brand.is_empty() && !brand.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
        return Err(format!(
            "card_brand {brand:?} is not a Square card brand (e.g. VISA, MASTERCARD)"
        ));
    }
    let last_4 = get(3);
    if !(last_4.is_empty() || last_4.len() == 4 && last_4.chars().all(|c| c.is_ascii_digit())) {
        return Err(format!("last_4 {last_4:?} is not four digits"));
    }
    let num = |name: &str, v: &str, lo: i32, hi: i32| -> std::result::Result<Option<i32>, String> {
        if v.is_empty() {
            return Ok(None);
        }
        match v.parse::<i32>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(format!("{name} {v:?} is not a number from {lo} to {hi}")),
        }
    };
    Ok(CardRecord {
        customer_id: customer.to_string(),
        card_id: card.to_string(),
        card_brand: (!brand.is_empty()).then(|| brand.to_ascii_uppercase()),
        last_4: (!last_4.is_empty()).then(|| last_4.to_owned()),
        exp_month: num("exp_month", get(4), 1, 12)?,
        exp_year: num("exp_year", get(5), 1990, 2200)?,
        enabled: true,
    })
}

/// `cards import FILE.csv`: all rows or none.
///
/// # Errors
/// [`CommandError::BadInput`] naming the file, line and field.
pub async fn import_cards(app: &App, path: &Path) -> Result<usize> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|e| CommandError::BadInput(format!("{name}: cannot open: {e}")))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| CommandError::BadInput(format!("{name}:1: cannot read the header: {e}")))?
        .clone();
    let mut idx = [0usize; 6];
    for (i, col) in IMPORT_COLUMNS.iter().enumerate() {
        idx[i] = headers
            .iter()
            .position(|h| h.trim() == *col)
            .ok_or_else(|| {
                CommandError::BadInput(format!(
                    "{name}:1: missing column {col:?} (the header must be {})",
                    IMPORT_COLUMNS.join(",")
                ))
            })?;
    }
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            CommandError::BadInput(format!("{name}:{line}: {}", e.kind_summary()))
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let row = parse_import_row(&rec, &idx)
            .map_err(|e| CommandError::BadInput(format!("{name}:{line}: {e}")))?;
        rows.push((line, row));
    }
    let mut tx = app.pool.begin().await.map_err(StoreError::from)?;
    for (line, row) in &rows {
        cards::upsert_customer_card(&mut tx, row)
            .await
            .map_err(|e| match e {
                StoreError::Rejected(m) | StoreError::NotFound(m) => {
                    CommandError::BadInput(format!("{name}:{line}: {m}"))
                }
                other => other.into(),
            })?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    tracing::info!(file = %name, cards = rows.len(), "cards imported");
    Ok(rows.len())
}

trait KindSummary {
    fn kind_summary(&self) -> String;
}

impl KindSummary for csv::Error {
    fn kind_summary(&self) -> String {
        match self.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => {
                format!("expected {expected_len} fields, found {len}")
            }
            csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
            _ => self.to_string(),
        }
    }
}

/// `customers list`.
///
/// # Errors
/// [`CommandError`].
pub async fn list_customers(app: &App, format: Format) -> Result<()> {
    let rows = cards::list_customers(&app.pool).await?;
    print_rows(&rows, format, |rows| {
        table(
            &["CUSTOMER", "NAME", "EMAIL", "CARDS", "SUBSCRIPTIONS"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        [r.given_name.as_deref(), r.family_name.as_deref()]
                            .iter()
                            .flatten()
                            .copied()
                            .collect::<Vec<_>>()
                            .join(" "),
                        r.email_address.clone().unwrap_or_default(),
                        r.cards.to_string(),
                        r.subscriptions.to_string(),
                    ]
                })
                .collect(),
        )
    })
}

/// `cards list`.
///
/// # Errors
/// [`CommandError`].
pub async fn list_cards(app: &App, format: Format) -> Result<()> {
    let rows = cards::list_cards(&app.pool).await?;
    print_rows(&rows, format, |rows| {
        table(
            &["CARD", "CUSTOMER", "BRAND", "LAST4", "EXPIRES", "ENABLED"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.customer_id.clone(),
                        r.card_brand.clone(),
                        r.last_4.clone().unwrap_or_default(),
                        match (r.exp_month, r.exp_year) {
                            (Some(m), Some(y)) if r.expired => format!("{m:02}/{y} (expired)"),
                            (Some(m), Some(y)) => format!("{m:02}/{y}"),
                            _ => String::new(),
                        },
                        r.enabled.to_string(),
                    ]
                })
                .collect(),
        )
    })
}
