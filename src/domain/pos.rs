//! Square Point of Sale's mobile-web API, as data: the launch URLs a counter device opens (iOS
//! `square-commerce-v1://payment/create?data=…`, Android `intent:#Intent;…;end`), what POS sends
//! back to the callback URL on that device, and POS's errors in plain words. Pure.
//!
//! Facts (field names, versions, encodings, error codes) follow Square's own SDKs: the iOS
//! SDK's `SCCAPIRequest`/`SCCAPIResponse` (API version 1.3, the JSON percent-encoded with only
//! unreserved characters left as they are) and the Android SDK's `PosApi` (API v2.0 for the web,
//! `com.squareup.pos.*` extras and results). The callback proves nothing on its own: it comes
//! unsigned from the device's browser, so the sale it reports is confirmed with Square's server
//! API before anything is recorded.

use std::collections::HashMap;

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

/// The iOS POS API version web pages send (the SDK's `SCCAPIVersion`).
pub const IOS_API_VERSION: &str = "1.3";
/// The Android POS API version of Square's web example.
pub const ANDROID_API_VERSION: &str = "v2.0";

/// What iOS leaves unencoded in `data`: RFC 3986's unreserved characters only (the URL query
/// set minus `:/?#[]@!$&'()*+,;=`, as the SDK does).
const IOS_DATA: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// What an intent extra's value must not carry raw: the separators of the intent syntax, `%`,
/// spaces and controls (Android decodes each value with `Uri.decode`).
const INTENT_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b';').add(b'#').add(b'"');

/// One sale to launch: the first period, charged to the customer at the counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// `SQUARE_APPLICATION_ID` (the POS API's client id).
    pub client_id: String,
    /// The registered web callback URL, sent unchanged.
    pub callback_url: String,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217 (must be the logged-in seller's).
    pub currency: String,
    /// The Square customer the sale is attached to (so POS offers to save the card).
    pub customer_id: String,
    /// Echoed back to the callback (iOS `state`, Android `REQUEST_METADATA`).
    pub state: String,
    /// The location, if one is configured (must be the logged-in one).
    pub location_id: Option<String>,
    /// A note on the payment.
    pub notes: Option<String>,
}

#[derive(Serialize)]
struct IosMoney<'a> {
    amount: i64,
    currency_code: &'a str,
}

#[derive(Serialize)]
struct IosOptions {
    supported_tender_types: [&'static str; 1],
    clear_default_fees: bool,
    auto_return: bool,
    skip_receipt: bool,
}

#[derive(Serialize)]
struct IosData<'a> {
    client_id: &'a str,
    version: &'static str,
    amount_money: IosMoney<'a>,
    callback_url: &'a str,
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location_id: Option<&'a str>,
    customer_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notes: Option<&'a str>,
    options: IosOptions,
}

/// The iOS launch URL: `square-commerce-v1://payment/create?data=<percent-encoded JSON>`, card
/// tender only, no default fees (the amount is the plan's), no auto-return (saving the card
/// shows a modal that suppresses it anyway).
pub fn ios_url(l: &Launch) -> String {
    let data = IosData {
        client_id: &l.client_id,
        version: IOS_API_VERSION,
        amount_money: IosMoney {
            amount: l.amount_minor,
            currency_code: &l.currency,
        },
        callback_url: &l.callback_url,
        state: &l.state,
        location_id: l.location_id.as_deref(),
        customer_id: &l.customer_id,
        notes: l.notes.as_deref(),
        options: IosOptions {
            supported_tender_types: ["CREDIT_CARD"],
            clear_default_fees: true,
            auto_return: false,
            skip_receipt: false,
        },
    };
    // Serialising plain strings and integers cannot fail.
    let json = serde_json::to_string(&data).unwrap_or_default();
    format!(
        "square-commerce-v1://payment/create?data={}",
        utf8_percent_encode(&json, IOS_DATA)
    )
}

/// The Android launch URL (a Chrome intent URI): the charge action on package `com.squareup`,
/// `fallback_url` for a device without POS, card tender only.
pub fn android_url(l: &Launch, fallback_url: &str) -> String {
    let mut extras = vec![
        ("S.browser_fallback_url", fallback_url.to_owned()),
        (
            "S.com.squareup.pos.WEB_CALLBACK_URI",
            l.callback_url.clone(),
        ),
        ("S.com.squareup.pos.CLIENT_ID", l.client_id.clone()),
        (
            "S.com.squareup.pos.API_VERSION",
            ANDROID_API_VERSION.to_owned(),
        ),
        (
            "i.com.squareup.pos.TOTAL_AMOUNT",
            l.amount_minor.to_string(),
        ),
        ("S.com.squareup.pos.CURRENCY_CODE", l.currency.clone()),
        (
            "S.com.squareup.pos.TENDER_TYPES",
            "com.squareup.pos.TENDER_CARD".to_owned(),
        ),
        ("S.com.squareup.pos.CUSTOMER_ID", l.customer_id.clone()),
        ("S.com.squareup.pos.REQUEST_METADATA", l.state.clone()),
    ];
    if let Some(loc) = &l.location_id {
        extras.push(("S.com.squareup.pos.LOCATION_ID", loc.clone()));
    }
    if let Some(note) = &l.notes {
        extras.push(("S.com.squareup.pos.NOTE", note.clone()));
    }
    let mut url =
        String::from("intent:#Intent;action=com.squareup.pos.action.CHARGE;package=com.squareup;");
    for (k, v) in extras {
        url.push_str(k);
        url.push('=');
        url.push_str(&utf8_percent_encode(&v, INTENT_VALUE).to_string());
        url.push(';');
    }
    url.push_str("end");
    url
}

/// The device a page is shown on, from its User-Agent (both launch buttons are always offered;
/// this only decides which comes first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// iPhone, iPad, iPod.
    Ios,
    /// Android.
    Android,
    /// Anything else (a desktop browser, say).
    Other,
}

/// The platform a User-Agent names.
pub fn platform(user_agent: &str) -> Platform {
    let ua = user_agent.to_ascii_lowercase();
    if ua.contains("android") {
        Platform::Android
    } else if ["iphone", "ipad", "ipod"].iter().any(|d| ua.contains(d)) {
        Platform::Ios
    } else {
        Platform::Other
    }
}

/// What POS reported to the callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PosResult {
    /// A sale was made (to be confirmed with Square).
    Sale {
        /// The server transaction id (the order id), when POS had one (not for offline or
        /// cash sales).
        transaction_id: Option<String>,
        /// The device's own id.
        client_transaction_id: Option<String>,
        /// The echoed state.
        state: Option<String>,
    },
    /// No sale.
    Failed {
        /// Why, as paycron reads it.
        error: PosError,
        /// The echoed state.
        state: Option<String>,
    },
}

/// POS's errors, the ones a counter can do something about named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PosError {
    /// The sale was canceled on the device.
    Canceled,
    /// The seller's account has no Customer Management.
    CustomerManagementNotSupported,
    /// The customer is not the logged-in seller's.
    InvalidCustomerId,
    /// The plan's currency is not the seller's.
    CurrencyMismatch,
    /// POS is logged in to another location.
    LocationMismatch,
    /// Nobody is logged in to POS.
    NotLoggedIn,
    /// The amount is under the card minimum, or over the maximum.
    AmountOutOfRange,
    /// Another POS API sale is still open on the device.
    AlreadyInProgress,
    /// The device is offline.
    NoNetwork,
    /// The POS app is too old for this API version.
    UnsupportedVersion,
    /// Any other code, as sent.
    Other(String),
}

impl PosError {
    /// Reads an iOS `error_code` or an Android `com.squareup.pos.ERROR_*` value.
    pub fn from_code(code: &str) -> Self {
        let c = code.trim();
        let c = c.strip_prefix("com.squareup.pos.").unwrap_or(c);
        let c = c.strip_prefix("ERROR_").unwrap_or(c).to_ascii_lowercase();
        match c.as_str() {
            "payment_canceled" | "transaction_canceled" => PosError::Canceled,
            "customer_management_not_supported" => PosError::CustomerManagementNotSupported,
            "invalid_customer_id" => PosError::InvalidCustomerId,
            "currency_code_mismatch" | "unsupported_currency_code" | "currency_code_missing" => {
                PosError::CurrencyMismatch
            }
            "location_id_mismatch" | "user_id_mismatch" | "illegal_location_id" => {
                PosError::LocationMismatch
            }
            "not_logged_in" | "user_not_logged_in" | "no_employee_logged_in" => {
                PosError::NotLoggedIn
            }
            "amount_too_small" | "amount_too_large" | "amount_invalid_format" => {
                PosError::AmountOutOfRange
            }
            "could_not_perform" | "transaction_already_in_progress" => PosError::AlreadyInProgress,
            "no_network_connection" | "no_network" => PosError::NoNetwork,
            "unsupported_api_version" | "invalid_version_number" => PosError::UnsupportedVersion,
            _ => PosError::Other(code.trim().to_owned()),
        }
    }

    /// A code [`PosError::from_code`] reads back as this error (iOS spelling).
    pub fn code(&self) -> &str {
        match self {
            PosError::Canceled => "payment_canceled",
            PosError::CustomerManagementNotSupported => "customer_management_not_supported",
            PosError::InvalidCustomerId => "invalid_customer_id",
            PosError::CurrencyMismatch => "currency_code_mismatch",
            PosError::LocationMismatch => "location_id_mismatch",
            PosError::NotLoggedIn => "not_logged_in",
            PosError::AmountOutOfRange => "amount_invalid_format",
            PosError::AlreadyInProgress => "could_not_perform",
            PosError::NoNetwork => "no_network_connection",
            PosError::UnsupportedVersion => "unsupported_api_version",
            PosError::Other(code) => code,
        }
    }

    /// What happened and what to do, in plain words for the person at the counter.
    pub fn advice(&self) -> String {
        match self {
            PosError::Canceled => "The sale was canceled in Square Point of Sale. Nothing was charged; start it again when the customer is ready.".into(),
            PosError::CustomerManagementNotSupported => "This Square account cannot attach sales to customers. In Square Point of Sale, turn on Settings › Customer Management, then try again.".into(),
            PosError::InvalidCustomerId => "Square Point of Sale does not know this customer. Make sure the device is logged in to the same Square account paycron uses, then try again.".into(),
            PosError::CurrencyMismatch => "The plan's currency is not the one this Square account takes. Change the plan, or use the account for that currency.".into(),
            PosError::LocationMismatch => "Square Point of Sale is logged in to another location than the one configured. Switch location, then try again.".into(),
            PosError::NotLoggedIn => "Nobody is logged in to Square Point of Sale. Log in, then try again.".into(),
            PosError::AmountOutOfRange => "Square refused the amount: it is below the card minimum or above the maximum.".into(),
            PosError::AlreadyInProgress => "Another sale started from a link is still open in Square Point of Sale. Finish or cancel it, then try again.".into(),
            PosError::NoNetwork => "The device is offline. Reconnect it, then try again.".into(),
            PosError::UnsupportedVersion => "This Square Point of Sale app is too old for its API. Update the app, then try again.".into(),
            PosError::Other(code) => format!("Square Point of Sale reported {code}. Nothing is recorded; try again, or contact support with that code."),
        }
    }
}

/// Why a callback could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    /// Neither an iOS `data` nor Android `com.squareup.pos.*` parameters.
    #[error("not a Point of Sale callback: no data parameter and no com.squareup.pos parameters")]
    NotACallback,
    /// The iOS `data` parameter is not the JSON POS sends.
    #[error("the data parameter is not Point of Sale's JSON: {0}")]
    BadData(String),
}

#[derive(Deserialize)]
struct IosCallback {
    status: Option<String>,
    transaction_id: Option<String>,
    client_transaction_id: Option<String>,
    error_code: Option<String>,
    state: Option<String>,
}

fn non_empty(v: Option<&String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Reads a callback's query parameters (already decoded): iOS puts a JSON object in `data`;
/// Android sends `com.squareup.pos.*` parameters.
///
/// # Errors
/// [`CallbackError`] for anything else.
pub fn parse_callback(query: &HashMap<String, String>) -> Result<PosResult, CallbackError> {
    if let Some(data) = query.get("data") {
        let cb: IosCallback =
            serde_json::from_str(data).map_err(|e| CallbackError::BadData(e.to_string()))?;
        return Ok(match (cb.status.as_deref(), cb.error_code) {
            (Some("ok"), _) => PosResult::Sale {
                transaction_id: non_empty(cb.transaction_id.as_ref()),
                client_transaction_id: non_empty(cb.client_transaction_id.as_ref()),
                state: cb.state,
            },
            (_, code) => PosResult::Failed {
                error: PosError::from_code(code.as_deref().unwrap_or("unknown_error")),
                state: cb.state,
            },
        });
    }
    let get = |k: &str| query.get(&format!("com.squareup.pos.{k}"));
    let state = non_empty(get("REQUEST_METADATA"));
    if let Some(code) = get("ERROR_CODE") {
        return Ok(PosResult::Failed {
            error: PosError::from_code(code),
            state,
        });
    }
    let server = non_empty(get("SERVER_TRANSACTION_ID"));
    let client = non_empty(get("CLIENT_TRANSACTION_ID"));
    if server.is_none() && client.is_none() && state.is_none() {
        return Err(CallbackError::NotACallback);
    }
    Ok(PosResult::Sale {
        transaction_id: server,
        client_transaction_id: client,
        state,
    })
}

/// The sale an enrollment expects Square to hold: the first period, for its customer.
#[derive(Clone, Debug)]
pub struct ExpectedSale<'a> {
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: &'a str,
    /// The enrollment's customer.
    pub customer_id: &'a str,
    /// The configured location, if any.
    pub location_id: Option<&'a str>,
    /// The enrollment began here: an older payment is not its sale.
    pub not_before: chrono::DateTime<chrono::Utc>,
}

/// Why a payment Square reports is not the enrollment's sale (empty: it is). A counter sale
/// took money, for the plan's amount and currency, from the enrollment's customer, at the
/// configured location, after the enrollment began, and is not one of paycron's own charges
/// (those carry a `reference_id`).
pub fn sale_differences(
    expected: &ExpectedSale<'_>,
    p: &crate::domain::answer::ProviderPayment,
) -> Vec<String> {
    let a = &p.answer;
    let mut out = Vec::new();
    if !p.taken {
        out.push(format!(
            "payment {} took no money (status {})",
            a.payment_id, a.status
        ));
    }
    if (a.amount_minor, a.currency.as_str()) != (expected.amount_minor, expected.currency) {
        out.push(format!(
            "amount {} {} instead of {} {}",
            a.amount_minor, a.currency, expected.amount_minor, expected.currency
        ));
    }
    if a.customer_id.as_deref() != Some(expected.customer_id) {
        out.push(format!(
            "customer {} instead of {}",
            a.customer_id.as_deref().unwrap_or("none"),
            expected.customer_id
        ));
    }
    if let (Some(want), Some(got)) = (expected.location_id, a.location_id.as_deref())
        && want != got
    {
        out.push(format!("location {got} instead of {want}"));
    }
    if a.reference_id.is_some() {
        out.push("a charge of paycron's, not a counter sale".into());
    }
    if p.created_at.is_some_and(|t| t < expected.not_before) {
        out.push("made before the enrollment began".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> Launch {
        Launch {
            client_id: "sq0idp-app".into(),
            callback_url: "https://billing.example.com/enroll/callback".into(),
            amount_minor: 1999,
            currency: "USD".into(),
            customer_id: "def456".into(),
            state: "st-abc".into(),
            location_id: Some("abc123".into()),
            notes: Some("blue shoes".into()),
        }
    }

    /// The iOS SDK's own serialized example (`SCCAPIRequestTests.swift`), field by field: the
    /// same keys and values, except what a web page sends differently (no `sdk_version`; card
    /// tender, no auto-return, default fees cleared).
    #[test]
    fn the_ios_url_carries_the_sdks_fields_percent_encoded() {
        let url = ios_url(&Launch {
            client_id: "<app id>".into(),
            callback_url: "my-app://perform-callback/square_request".into(),
            amount_minor: 100,
            state: "state-user-info".into(),
            ..launch()
        });
        let data = url
            .strip_prefix("square-commerce-v1://payment/create?data=")
            .unwrap();
        assert!(
            data.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~%".contains(c)),
            "{data}"
        );
        let json: serde_json::Value = serde_json::from_str(
            &percent_encoding::percent_decode_str(data)
                .decode_utf8()
                .unwrap(),
        )
        .unwrap();
        let sdk: serde_json::Value = serde_json::from_str(
            r#"{"client_id":"<app id>","sdk_version":"3.5.0","version":"1.3",
                "amount_money":{"amount":100,"currency_code":"USD"},
                "callback_url":"my-app://perform-callback/square_request","state":"state-user-info",
                "location_id":"abc123","customer_id":"def456","notes":"blue shoes",
                "options":{"supported_tender_types":["CREDIT_CARD"],"clear_default_fees":false,"auto_return":true,
                           "disable_cnp":0,"skip_receipt":0}}"#,
        )
        .unwrap();
        for key in [
            "client_id",
            "version",
            "amount_money",
            "callback_url",
            "state",
            "location_id",
            "customer_id",
            "notes",
        ] {
            assert_eq!(json[key], sdk[key], "{key}");
        }
        assert_eq!(
            json["options"]["supported_tender_types"],
            sdk["options"]["supported_tender_types"]
        );
        assert_eq!(json["amount_money"]["amount"], 100, "a JSON number");
        assert!(json.get("sdk_version").is_none());
    }

    /// Square's web example (WEBREF), extra by extra, with the customer and the state added.
    #[test]
    fn the_android_url_follows_squares_intent_example() {
        let l = Launch {
            client_id: "sq0ids-yourClientId".into(),
            callback_url: "https://my.website.com/index.html".into(),
            amount_minor: 100,
            location_id: None,
            notes: None,
            ..launch()
        };
        let url = android_url(&l, "https://my.website.com/index.html");
        let example = "intent:#Intent;action=com.squareup.pos.action.CHARGE;package=com.squareup;\
            S.browser_fallback_url=https://my.website.com/index.html;\
            S.com.squareup.pos.WEB_CALLBACK_URI=https://my.website.com/index.html;\
            S.com.squareup.pos.CLIENT_ID=sq0ids-yourClientId;S.com.squareup.pos.API_VERSION=v2.0;\
            i.com.squareup.pos.TOTAL_AMOUNT=100;S.com.squareup.pos.CURRENCY_CODE=USD;\
            S.com.squareup.pos.TENDER_TYPES=com.squareup.pos.TENDER_CARD;";
        assert!(url.starts_with(example), "{url}");
        assert!(url.ends_with(
            "S.com.squareup.pos.CUSTOMER_ID=def456;S.com.squareup.pos.REQUEST_METADATA=st-abc;end"
        ));
        // A value with the intent syntax's separators cannot break out of its extra.
        let tricky = android_url(
            &Launch {
                notes: Some("a;b#c d".into()),
                ..l
            },
            "https://x",
        );
        assert!(
            tricky.contains("S.com.squareup.pos.NOTE=a%3Bb%23c%20d;end"),
            "{tricky}"
        );
    }

    /// Long on purpose: one table of callbacks and the readings expected of them.
    #[test]
    fn callbacks_from_both_platforms_are_read_and_errors_put_in_words() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            parse_callback(&q(&[(
                "data",
                r#"{"status":"ok","transaction_id":"ORD1","client_transaction_id":"C1","state":"st"}"#
            )])),
            Ok(PosResult::Sale {
                transaction_id: Some("ORD1".into()),
                client_transaction_id: Some("C1".into()),
                state: Some("st".into())
            })
        );
        assert_eq!(
            parse_callback(&q(&[(
                "data",
                r#"{"status":"error","error_code":"customer_management_not_supported","state":"st"}"#
            )])),
            Ok(PosResult::Failed {
                error: PosError::CustomerManagementNotSupported,
                state: Some("st".into())
            })
        );
        assert_eq!(
            parse_callback(&q(&[
                ("com.squareup.pos.SERVER_TRANSACTION_ID", "ORD2"),
                ("com.squareup.pos.CLIENT_TRANSACTION_ID", "C2"),
                ("com.squareup.pos.REQUEST_METADATA", "st2"),
            ])),
            Ok(PosResult::Sale {
                transaction_id: Some("ORD2".into()),
                client_transaction_id: Some("C2".into()),
                state: Some("st2".into())
            })
        );
        assert_eq!(
            parse_callback(&q(&[
                (
                    "com.squareup.pos.ERROR_CODE",
                    "com.squareup.pos.ERROR_TRANSACTION_CANCELED"
                ),
                ("com.squareup.pos.REQUEST_METADATA", "st3"),
            ])),
            Ok(PosResult::Failed {
                error: PosError::Canceled,
                state: Some("st3".into())
            })
        );
        assert_eq!(
            PosError::from_code("com.squareup.pos.UNSUPPORTED_API_VERSION"),
            PosError::UnsupportedVersion
        );
        assert_eq!(
            PosError::from_code("user_id_mismatch"),
            PosError::LocationMismatch
        );
        assert_eq!(
            PosError::from_code("com.squareup.pos.ERROR_INVALID_CUSTOMER_ID"),
            PosError::InvalidCustomerId
        );
        assert!(
            PosError::from_code("something_new")
                .advice()
                .contains("something_new")
        );
        assert_eq!(
            parse_callback(&q(&[("x", "y")])),
            Err(CallbackError::NotACallback)
        );
        assert!(matches!(
            parse_callback(&q(&[("data", "not json")])),
            Err(CallbackError::BadData(_))
        ));
        assert_eq!(
            platform("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"),
            Platform::Ios
        );
        assert_eq!(
            platform("Mozilla/5.0 (Linux; Android 14; Pixel 8)"),
            Platform::Android
        );
        assert_eq!(platform("Mozilla/5.0 (X11; Linux x86_64)"), Platform::Other);
    }

    fn sale(
        amount: i64,
        customer: &str,
        reference: Option<&str>,
    ) -> crate::domain::answer::ProviderPayment {
        crate::domain::answer::ProviderPayment {
            answer: crate::domain::answer::Answer {
                payment_id: "P1".into(),
                status: "COMPLETED".into(),
                amount_minor: amount,
                currency: "USD".into(),
                customer_id: Some(customer.into()),
                card_id: None,
                location_id: Some("L1".into()),
                reference_id: reference.map(Into::into),
            },
            taken: true,
            created_at: Some("2027-01-31T10:00:00Z".parse().unwrap()),
        }
    }

    #[test]
    fn a_counter_sale_is_the_plans_amount_for_the_customer_after_the_enrollment_began() {
        let expected = ExpectedSale {
            amount_minor: 1999,
            currency: "USD",
            customer_id: "C1",
            location_id: Some("L1"),
            not_before: "2027-01-31T09:00:00Z".parse().unwrap(),
        };
        assert!(sale_differences(&expected, &sale(1999, "C1", None)).is_empty());
        assert_eq!(
            sale_differences(&expected, &sale(500, "C2", Some("charge"))),
            vec![
                "amount 500 USD instead of 1999 USD".to_owned(),
                "customer C2 instead of C1".to_owned(),
                "a charge of paycron's, not a counter sale".to_owned(),
            ]
        );
        let late = ExpectedSale {
            not_before: "2027-02-01T00:00:00Z".parse().unwrap(),
            ..expected
        };
        assert_eq!(
            sale_differences(&late, &sale(1999, "C1", None)),
            vec!["made before the enrollment began".to_owned()]
        );
    }

    #[test]
    fn every_error_code_reads_back_as_its_error() {
        for e in [
            PosError::Canceled,
            PosError::CustomerManagementNotSupported,
            PosError::InvalidCustomerId,
            PosError::CurrencyMismatch,
            PosError::LocationMismatch,
            PosError::NotLoggedIn,
            PosError::AmountOutOfRange,
            PosError::AlreadyInProgress,
            PosError::NoNetwork,
            PosError::UnsupportedVersion,
            PosError::Other("something_new".into()),
        ] {
            assert_eq!(PosError::from_code(e.code()), e);
        }
    }
}
