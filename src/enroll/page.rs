//! The enrollment page, server-rendered: small, readable on a phone, usable without JavaScript
//! (a waiting page refreshes itself with `<meta http-equiv="refresh">`), with every value from
//! the database or Square HTML-escaped. Pure: a model in, HTML out.

use chrono::{DateTime, Utc};

use crate::domain::money::{Currency, format_minor};
use crate::domain::pos::{Platform, PosError};
use crate::store::enrollments::EnrollmentView;

/// How often a waiting page reloads itself, seconds.
pub const REFRESH_SECONDS: u32 = 3;

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct PageModel<'a> {
    /// `PAYCRON_BUSINESS_NAME`.
    pub business: &'a str,
    /// The enrollment.
    pub view: &'a EnrollmentView,
    /// The link's token (forms post back to it).
    pub token: &'a str,
    /// Now.
    pub now: DateTime<Utc>,
    /// The device, from its User-Agent (which button comes first).
    pub platform: Platform,
    /// The iOS launch URL.
    pub ios_url: String,
    /// The Android launch URL.
    pub android_url: String,
    /// When the second period begins (the first charge on file).
    pub second_period: Option<DateTime<Utc>>,
}

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An amount as people at a counter read it: `USD 19.99`.
pub fn money_words(minor: i64, currency: &str) -> String {
    match currency.parse::<Currency>() {
        Ok(c) => {
            let text = format_minor(minor, c);
            let number = text.rsplit_once(' ').map_or(text.as_str(), |(n, _)| n);
            format!("{currency} {number}")
        }
        Err(_) => format!("{currency} {minor} (minor units)"),
    }
}

/// The plan in words: `USD 19.99 every month`, `EUR 5.00 every 2 weeks`.
pub fn plan_words(v: &EnrollmentView) -> String {
    let unit = v.interval_unit.as_str();
    let every = if v.interval_count == 1 {
        format!("every {unit}")
    } else {
        format!("every {} {unit}s", v.interval_count)
    };
    format!("{} {every}", money_words(v.amount_minor, &v.currency))
}

/// A date in the subscription's zone: `28 Feb 2027`.
pub fn date_words(at: DateTime<Utc>, zone: &str) -> String {
    match zone.parse::<chrono_tz::Tz>() {
        Ok(tz) => at.with_timezone(&tz).format("%-d %b %Y").to_string(),
        Err(_) => at.format("%-d %b %Y").to_string(),
    }
}

fn layout(business: &str, title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh {
        format!(r#"<meta http-equiv="refresh" content="{REFRESH_SECONDS}">"#)
    } else {
        String::new()
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<meta name="referrer" content="no-referrer">
{refresh}
<title>{title} · {business}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1b1f24;font-size:18px;line-height:1.45}}
main{{max-width:30rem;margin:0 auto;padding:1.25rem}}
header{{font-size:.95rem;color:#4a5260;margin-bottom:.5rem}}
h1{{font-size:1.5rem;margin:.25rem 0 1rem}}
.card{{background:#fff;border-radius:12px;padding:1rem 1.1rem;box-shadow:0 1px 3px rgba(0,0,0,.12);margin-bottom:1rem}}
.plan{{font-size:1.35rem;font-weight:650;margin:0 0 .25rem}}
.muted{{color:#4a5260;font-size:.95rem;margin:.25rem 0}}
.button{{display:block;text-align:center;text-decoration:none;font-weight:650;padding:.95rem 1rem;border-radius:10px;margin:.6rem 0;border:2px solid #0b57d0;font-size:1.05rem;width:100%;box-sizing:border-box;font-family:inherit;cursor:pointer}}
.primary{{background:#0b57d0;color:#fff}}
.secondary{{background:#fff;color:#0b57d0}}
.button:focus-visible{{outline:3px solid #f9ab00;outline-offset:2px}}
.ok{{border-left:6px solid #188038}}
.warn{{border-left:6px solid #b06000}}
.err{{border-left:6px solid #c5221f}}
ol{{padding-left:1.2rem;margin:.25rem 0}}
</style>
</head>
<body>
<main>
<header>{business}</header>
{body}
</main>
</body>
</html>
"#,
        business = esc(business),
        title = esc(title),
    )
}

/// A page with a message only (an unknown link, a callback that names no enrollment).
pub fn message(business: &str, title: &str, text: &str) -> String {
    layout(
        business,
        title,
        false,
        &format!(
            r#"<h1>{}</h1><section class="card warn" role="status"><p>{}</p></section>"#,
            esc(title),
            esc(text)
        ),
    )
}

fn launch_buttons(m: &PageModel<'_>, again: bool) -> String {
    let verb = if again {
        "Try again"
    } else {
        "Take the first payment"
    };
    let ios = format!(
        r#"<a class="button {{}}" id="launch-ios" href="{}">{verb} in Square Point of Sale (iPhone, iPad)</a>"#,
        esc(&m.ios_url)
    );
    let android = format!(
        r#"<a class="button {{}}" id="launch-android" href="{}">{verb} in Square Point of Sale (Android)</a>"#,
        esc(&m.android_url)
    );
    let (first, second) = match m.platform {
        Platform::Android => (android, ios),
        _ => (ios, android),
    };
    format!(
        "{}\n{}",
        first.replacen("{}", "primary", 1),
        second.replacen("{}", "secondary", 1)
    )
}

/// The enrollment page for where the enrollment stands.
pub fn render(m: &PageModel<'_>) -> String {
    let v = m.view;
    let plan = plan_words(v);
    let first = money_words(v.amount_minor, &v.currency);
    let next = m
        .second_period
        .map(|t| format!(", next on {}", date_words(t, &v.time_zone)))
        .unwrap_or_default();
    let summary = format!(
        r#"<section class="card" aria-label="Plan"><p class="plan" id="plan">{}</p><p class="muted">First payment {} today at the counter{}.</p></section>"#,
        esc(&plan),
        esc(&first),
        esc(&next)
    );
    match v.status.as_str() {
        "open" if v.expires_at <= m.now => expired(m),
        "open" => {
            let problem = v.last_error.as_deref().map(|code| {
                let advice = if code == "sale_mismatch" {
                    "Square reports a sale that is not this one (another amount or customer). Nothing was recorded; take the payment again from this page.".to_owned()
                } else {
                    PosError::from_code(code).advice()
                };
                format!(
                    r#"<section class="card err" role="alert" id="problem"><p>{}</p></section>"#,
                    esc(&advice)
                )
            });
            let body = format!(
                r#"<h1>Sign up at the counter</h1>
{summary}
{problem}
<section class="card" aria-label="Steps">
<ol>
<li>Tap the button for this device: Square Point of Sale opens with the amount and the customer.</li>
<li>Take the card payment.</li>
<li>After the sale, tap <strong>Save card on file</strong> so later periods are charged automatically.</li>
</ol>
{buttons}
<p class="muted">This link works until {until}.</p>
</section>"#,
                problem = problem.unwrap_or_default(),
                buttons = launch_buttons(m, v.last_error.is_some()),
                until = esc(&date_words(v.expires_at, &v.time_zone)),
            );
            layout(m.business, "Sign up at the counter", false, &body)
        }
        "paid" if v.card_missing_at.is_some() => {
            let body = format!(
                r#"<h1>The card was not saved</h1>
{summary}
<section class="card warn" role="alert" id="status">
<p>The first payment ({first}) is recorded, but no saved card has arrived.</p>
<ol>
<li>In Square Point of Sale, open <strong>Customers</strong>, find the customer, and tap <strong>Add card</strong> (or <strong>Save card on file</strong>).</li>
<li>Then tap the button below.</li>
</ol>
<form method="post" action="/enroll/{token}/check"><button class="button primary" id="check" type="submit">I saved the card — check again</button></form>
</section>"#,
                first = esc(&first),
                token = esc(m.token),
            );
            layout(m.business, "The card was not saved", false, &body)
        }
        "paid" => {
            let body = format!(
                r#"<h1>Payment received</h1>
{summary}
<section class="card ok" role="status" id="status">
<p>The first payment ({first}) is recorded. Waiting for the saved card…</p>
<p class="muted">If Square Point of Sale still shows the receipt, tap <strong>Save card on file</strong> there. This page updates by itself.</p>
</section>"#,
                first = esc(&first),
            );
            layout(m.business, "Payment received", true, &body)
        }
        "completed" => {
            let card = match (v.card_brand.as_deref(), v.last_4.as_deref()) {
                (Some(b), Some(l)) => format!(" ({} ending {l})", b.replace('_', " ")),
                _ => String::new(),
            };
            let next = v
                .next_due_at
                .map(|t| {
                    format!(
                        "next charge {} on {}",
                        money_words(v.amount_minor, &v.currency),
                        date_words(t, &v.time_zone)
                    )
                })
                .unwrap_or_else(|| "no further charge".into());
            let body = format!(
                r#"<h1 id="done">Card saved — {next}</h1>
<section class="card ok" role="status" id="status">
<p>The customer is signed up: {plan}. The first payment was taken at the counter; later periods are charged to the saved card{card}.</p>
</section>"#,
                next = esc(&next),
                plan = esc(&plan),
                card = esc(&card),
            );
            layout(m.business, "Card saved", false, &body)
        }
        "expired" => expired(m),
        _ => layout(
            m.business,
            "Enrollment canceled",
            false,
            r#"<h1>This enrollment was canceled</h1><section class="card warn" role="status" id="status"><p>Nothing more is charged. Ask for a new link to sign the customer up.</p></section>"#,
        ),
    }
}

fn expired(m: &PageModel<'_>) -> String {
    layout(
        m.business,
        "Link expired",
        false,
        &format!(
            r#"<h1>This link has expired</h1><section class="card warn" role="status" id="status"><p>It could start the sale until {}. Nothing was charged. Ask for a new enrollment link.</p></section>"#,
            esc(&date_words(m.view.expires_at, &m.view.time_zone))
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_plans_read_as_people_say_them() {
        assert_eq!(money_words(1999, "USD"), "USD 19.99");
        assert_eq!(money_words(500, "JPY"), "JPY 500");
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            date_words("2027-02-28T05:00:00Z".parse().unwrap(), "America/New_York"),
            "28 Feb 2027"
        );
    }
}
