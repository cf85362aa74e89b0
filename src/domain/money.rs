//! Money: integer minor units plus an ISO 4217 currency.
//!
//! Invariant 2 of the design lives here: there are no floats anywhere on the money path. An
//! amount is an `i64` count of the currency's smallest unit, strictly positive and at most
//! [`MAX_AMOUNT_MINOR`]; a currency is one of the active ISO 4217 alphabetic codes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The largest amount paycron will charge in one payment, in minor units (10^12).
///
/// A sanity cap, not a business limit: it stops a unit mistake (dollars typed as cents times a
/// thousand) from ever reaching a card.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

/// Active ISO 4217 alphabetic codes with their minor-unit exponent where it is not 2.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD:3 BIF:0 BMD BND BOB \
BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP:0 CNY COP CRC CUP CVE CZK DJF:0 DKK DOP DZD EGP ERN ETB EUR \
FJD FKP GBP GEL GHS GIP GMD GNF:0 GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD:3 IRR ISK:0 JMD JOD:3 \
JPY:0 KES KGS KHR KMF:0 KPW KRW:0 KWD:3 KYD KZT LAK LBP LKR LRD LSL LYD:3 MAD MDL MGA MKD MMK MNT \
MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR:3 PAB PEN PGK PHP PKR PLN PYG:0 QAR \
RON RSD RUB RWF:0 SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND:3 \
TOP TRY TTD TWD TZS UAH UGX:0 USD UYU UZS VES VND:0 VUV:0 WST XAF:0 XCD XCG XOF:0 XPF:0 YER ZAR \
ZMW ZWG";

/// The table above, parsed once: code → exponent. Currencies are decoded from every row billing
/// reads, so the lookup is a hash probe rather than a scan of the text.
static EXPONENTS: std::sync::LazyLock<std::collections::HashMap<[u8; 3], u32>> =
    std::sync::LazyLock::new(|| {
        ISO_4217
            .split_whitespace()
            .filter_map(|entry| {
                let (code, exp) = entry.split_once(':').unwrap_or((entry, "2"));
                let code: [u8; 3] = code.as_bytes().try_into().ok()?;
                Some((code, exp.parse().unwrap_or(2)))
            })
            .collect()
    });

/// Every currency code paycron accepts (the SQL API's `paycron.currencies` is filled from it).
pub fn currency_codes() -> impl Iterator<Item = &'static str> {
    ISO_4217
        .split_whitespace()
        .map(|entry| entry.split(':').next().unwrap_or(entry))
}

/// Why a currency or an amount was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    /// Not three upper-case letters, or not an ISO 4217 code.
    #[error("currency {0:?} is not a three-letter ISO 4217 code (e.g. USD, EUR, JPY)")]
    Currency(String),
    /// Not a whole number of minor units.
    #[error("amount {0:?} is not a whole number of minor units (e.g. 1999 for 19.99)")]
    NotInteger(String),
    /// Zero or negative.
    #[error("amount {0} must be greater than 0")]
    NotPositive(i64),
    /// Above [`MAX_AMOUNT_MINOR`].
    #[error("amount {0} is above the cap of {MAX_AMOUNT_MINOR} minor units")]
    TooLarge(i64),
    /// Two amounts in different currencies were combined.
    #[error("currency mismatch: {0} vs {1}")]
    Mismatch(Currency, Currency),
}

/// An ISO 4217 alphabetic currency code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// The code as text, e.g. `"USD"`.
    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Digits after the decimal point in the currency's major unit (2 for USD, 0 for JPY).
    pub fn exponent(&self) -> u32 {
        EXPONENTS.get(&self.0).copied().unwrap_or(2)
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, MoneyError> {
        match <[u8; 3]>::try_from(s.as_bytes()) {
            Ok(code) if EXPONENTS.contains_key(&code) => Ok(Currency(code)),
            _ => Err(MoneyError::Currency(s.to_owned())),
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, MoneyError> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

/// A chargeable amount: positive minor units, capped, in one currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    // The names rows and JSON output have always used.
    #[serde(rename = "amount_minor")]
    minor: i64,
    currency: Currency,
}

impl Money {
    /// Builds an amount, refusing zero, negatives and anything above the cap.
    ///
    /// # Errors
    /// [`MoneyError::NotPositive`] or [`MoneyError::TooLarge`].
    pub fn new(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if minor <= 0 {
            return Err(MoneyError::NotPositive(minor));
        }
        if minor > MAX_AMOUNT_MINOR {
            return Err(MoneyError::TooLarge(minor));
        }
        Ok(Money { minor, currency })
    }

    /// Parses an amount typed by a person: digits only, no sign, no decimal point.
    ///
    /// # Errors
    /// [`MoneyError::NotInteger`] for anything but plain digits, then as [`Money::new`].
    pub fn parse_minor(text: &str, currency: Currency) -> Result<Self, MoneyError> {
        let t = text.trim();
        if t.starts_with('-') && t[1..].chars().all(|c| c.is_ascii_digit()) && t.len() > 1 {
            let v = t.parse::<i64>().unwrap_or(i64::MIN);
            return Err(MoneyError::NotPositive(v));
        }
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit()) {
            return Err(MoneyError::NotInteger(text.to_owned()));
        }
        match t.parse::<i64>() {
            Ok(v) => Money::new(v, currency),
            Err(_) => Err(MoneyError::TooLarge(i64::MAX)),
        }
    }

    /// Minor units (cents for USD).
    pub fn minor(&self) -> i64 {
        self.minor
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The amount written in major units for people, e.g. `19.99 USD`; integer arithmetic only.
    pub fn display(&self) -> String {
        format_minor(self.minor, self.currency)
    }
}

/// Formats any signed minor-unit amount (totals may exceed the per-charge cap) for people.
pub fn format_minor(minor: i64, currency: Currency) -> String {
    let exp = currency.exponent();
    if exp == 0 {
        return format!("{minor} {currency}");
    }
    let scale = 10i64.pow(exp);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let scale = scale as u64;
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / scale,
        abs % scale,
        width = exp as usize
    )
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        "USD".parse().unwrap()
    }

    #[test]
    fn currencies() {
        assert_eq!(usd().as_str(), "USD");
        assert_eq!("JPY".parse::<Currency>().unwrap().exponent(), 0);
        assert_eq!("KWD".parse::<Currency>().unwrap().exponent(), 3);
        for bad in ["usd", "US", "USDD", "XYZ", "", "U$D"] {
            assert!(bad.parse::<Currency>().is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts() {
        assert_eq!(Money::parse_minor("1999", usd()).unwrap().minor(), 1999);
        assert_eq!(
            Money::parse_minor("0", usd()),
            Err(MoneyError::NotPositive(0))
        );
        assert_eq!(
            Money::parse_minor("-5", usd()),
            Err(MoneyError::NotPositive(-5))
        );
        assert!(matches!(
            Money::parse_minor("12.5", usd()),
            Err(MoneyError::NotInteger(_))
        ));
        assert!(matches!(
            Money::parse_minor("1000000000001", usd()),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(Money::parse_minor("1000000000000", usd()).is_ok());
        assert!(matches!(
            Money::parse_minor("99999999999999999999", usd()),
            Err(MoneyError::TooLarge(_))
        ));
    }

    #[test]
    fn display_is_exact() {
        assert_eq!(Money::new(1999, usd()).unwrap().display(), "19.99 USD");
        assert_eq!(Money::new(5, usd()).unwrap().display(), "0.05 USD");
        assert_eq!(format_minor(-1050, usd()), "-10.50 USD");
        let jpy = "JPY".parse().unwrap();
        assert_eq!(Money::new(500, jpy).unwrap().display(), "500 JPY");
    }
}
