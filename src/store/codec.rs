//! How the domain's types travel to and from SQL: the one place where a status is a string,
//! an id is a bare `uuid` or `text`, and an amount is two columns. Rows carry
//! [`SubscriptionStatus`], [`ChargeStatus`], the id newtypes and [`Money`]; a status or amount
//! the domain does not know is a decode error (the schema's CHECK constraints keep it from
//! being written).

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgRow, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, FromRow, Postgres, Row, Type};
use uuid::Uuid;

use crate::domain::refund::RefundStatus;
use crate::domain::{
    CardId, ChargeId, ChargeStatus, Currency, CustomerId, IdempotencyKey, Money, RefundId,
    SubscriptionId, SubscriptionStatus,
};

/// A type that travels as `text`: `parse` decodes with its `FromStr` (a value it does not know
/// is a decode error), `stored` with `from_stored` (trusting the schema's CHECK constraints).
macro_rules! as_text {
    ($t:ident, parse) => {
        as_text!(@impl $t, |s: &str| -> Result<$t, BoxDynError> { Ok(s.parse::<$t>()?) });
    };
    ($t:ident, stored) => {
        as_text!(@impl $t, |s: &str| -> Result<$t, BoxDynError> {
            Ok($t::from_stored(s.to_owned()))
        });
    };
    (@impl $t:ident, $decode:expr) => {
        impl Type<Postgres> for $t {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }
        impl PgHasArrayType for $t {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }
            fn array_compatible(ty: &PgTypeInfo) -> bool {
                <&str as PgHasArrayType>::array_compatible(ty)
            }
        }
        impl Encode<'_, Postgres> for $t {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
        impl<'r> Decode<'r, Postgres> for $t {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                ($decode)(value.as_str()?)
            }
        }
    };
}

as_text!(SubscriptionStatus, parse);
as_text!(ChargeStatus, parse);
as_text!(RefundStatus, parse);
as_text!(Currency, parse);

/// paycron's own ids travel as `uuid`.
macro_rules! uuid_newtype {
    ($t:ident) => {
        impl Type<Postgres> for $t {
            fn type_info() -> PgTypeInfo {
                <Uuid as Type<Postgres>>::type_info()
            }
        }
        impl PgHasArrayType for $t {
            fn array_type_info() -> PgTypeInfo {
                <Uuid as PgHasArrayType>::array_type_info()
            }
        }
        impl Encode<'_, Postgres> for $t {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <Uuid as Encode<Postgres>>::encode_by_ref(&self.0, buf)
            }
        }
        impl<'r> Decode<'r, Postgres> for $t {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok($t(<Uuid as Decode<Postgres>>::decode(value)?))
            }
        }
    };
}

uuid_newtype!(SubscriptionId);
uuid_newtype!(ChargeId);
uuid_newtype!(RefundId);

// Square's ids and the idempotency key: reading one back trusts the schema (its CHECK
// constraints hold the length and the no-card-number rule), so a row is never made unreadable
// by a stricter rule added to the parser later.
as_text!(CustomerId, stored);
as_text!(CardId, stored);
as_text!(IdempotencyKey, stored);

/// An amount is two columns, `amount_minor` and `currency`; rows flatten it
/// (`#[sqlx(flatten)]`). A stored amount outside [`Money`]'s range is a decode error (the
/// schema's CHECK constraints keep it from being written).
impl<'r> FromRow<'r, PgRow> for Money {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        let minor: i64 = row.try_get("amount_minor")?;
        let currency: Currency = row.try_get("currency")?;
        Money::new(minor, currency).map_err(|e| sqlx::Error::ColumnDecode {
            index: "amount_minor".to_owned(),
            source: Box::new(e),
        })
    }
}
