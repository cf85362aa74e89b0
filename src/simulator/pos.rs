//! Square Point of Sale's side of a mobile-web sale, played for the demo and the tests: read a
//! launch URL as the POS app does (iOS `square-commerce-v1://payment/create?data=…`, Android
//! `intent:#Intent;…;end`), and build the callback it sends the device's browser back to (iOS
//! `?data=<JSON>`, Android `com.squareup.pos.*` parameters).
//!
//! Written apart from paycron's own builders and parser (`domain::pos`), from the same SDK
//! facts, so the tests compare two readings of the format, not one with itself.

use std::collections::HashMap;

use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Which app the URL launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// iPhone or iPad.
    Ios,
    /// Android.
    Android,
}

/// What a launch URL asks POS for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchRequest {
    /// The platform.
    pub device: Device,
    /// The application id (`client_id` / `CLIENT_ID`).
    pub client_id: String,
    /// The registered web callback.
    pub callback_url: String,
    /// `version` (iOS) or `API_VERSION` (Android).
    pub version: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// The customer attached.
    pub customer_id: Option<String>,
    /// Echoed back (`state` / `REQUEST_METADATA`).
    pub state: Option<String>,
    /// The location asked for, if any.
    pub location_id: Option<String>,
    /// Tender types allowed.
    pub tender_types: Vec<String>,
}

fn text(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// Reads a launch URL as Square Point of Sale does.
///
/// # Errors
/// What POS would refuse it for, in words.
pub fn parse_launch(url: &str) -> Result<LaunchRequest, String> {
    if let Some(data) = url.strip_prefix("square-commerce-v1://payment/create?data=") {
        let json = percent_decode_str(data)
            .decode_utf8()
            .map_err(|e| format!("data is not UTF-8: {e}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("data is not JSON: {e}"))?;
        return Ok(LaunchRequest {
            device: Device::Ios,
            client_id: text(&v["client_id"]).ok_or("no client_id")?,
            callback_url: text(&v["callback_url"]).ok_or("no callback_url")?,
            version: text(&v["version"]).ok_or("no version")?,
            amount: v["amount_money"]["amount"]
                .as_i64()
                .ok_or("amount_money.amount is not a whole number")?,
            currency: text(&v["amount_money"]["currency_code"]).ok_or("no currency_code")?,
            customer_id: text(&v["customer_id"]),
            state: text(&v["state"]),
            location_id: text(&v["location_id"]),
            tender_types: v["options"]["supported_tender_types"]
                .as_array()
                .map(|a| a.iter().filter_map(text).collect())
                .unwrap_or_default(),
        });
    }
    let body = url
        .strip_prefix("intent:#Intent;")
        .and_then(|b| b.strip_suffix(";end"))
        .ok_or("neither a square-commerce-v1 URL nor an intent URL")?;
    let mut extras: HashMap<String, String> = HashMap::new();
    for part in body.split(';') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("intent part {part:?} is not key=value"))?;
        let v = percent_decode_str(v)
            .decode_utf8()
            .map_err(|e| format!("{k} is not UTF-8: {e}"))?;
        extras.insert(k.to_owned(), v.into_owned());
    }
    if extras.get("action").map(String::as_str) != Some("com.squareup.pos.action.CHARGE")
        || extras.get("package").map(String::as_str) != Some("com.squareup")
    {
        return Err("not the charge action of package com.squareup".into());
    }
    let s = |k: &str| extras.get(&format!("S.com.squareup.pos.{k}")).cloned();
    Ok(LaunchRequest {
        device: Device::Android,
        client_id: s("CLIENT_ID").ok_or("no CLIENT_ID")?,
        callback_url: s("WEB_CALLBACK_URI").ok_or("no WEB_CALLBACK_URI")?,
        version: s("API_VERSION").ok_or("no API_VERSION")?,
        amount: extras
            .get("i.com.squareup.pos.TOTAL_AMOUNT")
            .and_then(|a| a.parse::<i32>().ok())
            .map(i64::from)
            .ok_or("TOTAL_AMOUNT is not an int extra")?,
        currency: s("CURRENCY_CODE").ok_or("no CURRENCY_CODE")?,
        customer_id: s("CUSTOMER_ID"),
        state: s("REQUEST_METADATA"),
        location_id: s("LOCATION_ID"),
        tender_types: s("TENDER_TYPES")
            .map(|t| t.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// What POS reports back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PosAnswer {
    /// A sale: the order id is the server transaction id.
    Sale {
        /// The order.
        order_id: String,
        /// The device's own id.
        client_id: String,
    },
    /// No sale, with the iOS error code.
    Error(&'static str),
}

/// The URL POS sends the browser back to.
pub fn callback(req: &LaunchRequest, answer: &PosAnswer) -> String {
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let sep = if req.callback_url.contains('?') {
        '&'
    } else {
        '?'
    };
    match req.device {
        Device::Ios => {
            let mut data = match answer {
                PosAnswer::Sale {
                    order_id,
                    client_id,
                } => serde_json::json!({
                    "status": "ok", "transaction_id": order_id, "client_transaction_id": client_id,
                }),
                PosAnswer::Error(code) => {
                    serde_json::json!({"status": "error", "error_code": code})
                }
            };
            if let Some(state) = &req.state {
                data["state"] = state.clone().into();
            }
            format!("{}{sep}data={}", req.callback_url, enc(&data.to_string()))
        }
        Device::Android => {
            let mut params: Vec<(String, String)> = match answer {
                PosAnswer::Sale {
                    order_id,
                    client_id,
                } => vec![
                    ("SERVER_TRANSACTION_ID".into(), order_id.clone()),
                    ("CLIENT_TRANSACTION_ID".into(), client_id.clone()),
                ],
                PosAnswer::Error(code) => vec![
                    ("ERROR_CODE".into(), android_error(code).into()),
                    ("ERROR_DESCRIPTION".into(), format!("simulated {code}")),
                ],
            };
            if let Some(state) = &req.state {
                params.push(("REQUEST_METADATA".into(), state.clone()));
            }
            let query: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("com.squareup.pos.{k}={}", enc(v)))
                .collect();
            format!("{}{sep}{}", req.callback_url, query.join("&"))
        }
    }
}

fn android_error(ios: &str) -> &'static str {
    match ios {
        "payment_canceled" => "com.squareup.pos.ERROR_TRANSACTION_CANCELED",
        "invalid_customer_id" => "com.squareup.pos.ERROR_INVALID_CUSTOMER_ID",
        "customer_management_not_supported" => {
            "com.squareup.pos.ERROR_CUSTOMER_MANAGEMENT_NOT_SUPPORTED"
        }
        "location_id_mismatch" => "com.squareup.pos.ERROR_ILLEGAL_LOCATION_ID",
        "unsupported_api_version" => "com.squareup.pos.UNSUPPORTED_API_VERSION",
        _ => "com.squareup.pos.ERROR_INVALID_REQUEST",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Android intent of Square's web reference, as POS reads it.
    #[test]
    fn squares_own_intent_example_reads_as_pos_reads_it() {
        let url = "intent:#Intent;action=com.squareup.pos.action.CHARGE;package=com.squareup;S.browser_fallback_url=https://my.website.com/index.html;S.com.squareup.pos.WEB_CALLBACK_URI=https://my.website.com/index.html;S.com.squareup.pos.CLIENT_ID=sq0ids-yourClientId;S.com.squareup.pos.API_VERSION=v2.0;i.com.squareup.pos.TOTAL_AMOUNT=100;S.com.squareup.pos.CURRENCY_CODE=USD;S.com.squareup.pos.TENDER_TYPES=com.squareup.pos.TENDER_CARD,com.squareup.pos.TENDER_CASH;end";
        let r = parse_launch(url).unwrap();
        assert_eq!(r.device, Device::Android);
        assert_eq!(r.client_id, "sq0ids-yourClientId");
        assert_eq!(r.amount, 100);
        assert_eq!(r.version, "v2.0");
        assert_eq!(r.tender_types.len(), 2);
        let back = callback(
            &r,
            &PosAnswer::Sale {
                order_id: "O1".into(),
                client_id: "C1".into(),
            },
        );
        assert_eq!(
            back,
            "https://my.website.com/index.html?com.squareup.pos.SERVER_TRANSACTION_ID=O1&com.squareup.pos.CLIENT_TRANSACTION_ID=C1"
        );
    }
}
