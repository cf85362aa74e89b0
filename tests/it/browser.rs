//! The enrollment page in a real browser: headless Chromium (Debian's package; `.ci/run`
//! installs it) at a phone's viewport and User-Agent. The test reads the launch URLs from the
//! DOM Chromium built and checks them field by field against Square Point of Sale's API (iOS
//! 1.3 `data` JSON; Android v2.0 intent extras), follows the simulated Point of Sale
//! completion in the browser, and sees the page reach "Card saved". Screenshots go to
//! `target/tmp/enroll-*.png` (the README's is one of them).

use std::path::{Path, PathBuf};

use paycron::simulator::state::APPLICATION_ID;

use crate::enroll::{Shop, launch};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Chromium is installed (apt-get install chromium; .ci/run does)")
}

/// Chromium, headless, as an iPhone: `--dump-dom` (the DOM after load and redirects) or
/// `--screenshot=<file>`.
async fn browse(url: &str, what: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=390,844",
            "--force-device-scale-factor=1",
            &format!("--user-agent={IPHONE}"),
            &format!("--user-data-dir={}", profile.path().display()),
            what,
            url,
        ])
        .output()
        .await
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn screenshot(url: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("enroll-{name}.png"));
    let _ = std::fs::remove_file(&path);
    browse(url, &format!("--screenshot={}", path.display())).await;
    let png = std::fs::read(&path).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: a PNG");
    // PNG's IHDR: width and height, big-endian, at bytes 16..24: the phone's viewport.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 390, "{name}: the phone's width");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_page_in_chromium_launches_point_of_sale_and_reaches_card_saved() {
    let shop = Shop::open().await;
    let customer = shop.h.sim.with(|st| {
        st.create_customer(r#"{"given_name":"Grace","family_name":"Hopper","idempotency_key":"g"}"#)
            .json()["customer"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let (link, _) = shop
        .enroll(&[
            "--customer",
            &customer,
            "--anchor",
            "2027-01-31T15:00:00Z",
            "--timezone",
            "America/New_York",
            "--now",
            "2027-01-31T15:00:00Z",
        ])
        .await;
    let token = link.rsplit('/').next().unwrap().to_owned();

    let dom = browse(&link, "--dump-dom").await;
    assert!(dom.contains("USD 19.99 every month"), "{dom}");
    assert!(dom.contains("Save card on file"), "{dom}");
    screenshot(&link, "open").await;

    // iOS: square-commerce-v1://payment/create?data=<percent-encoded JSON>, API 1.3.
    let ios = launch(&dom, "launch-ios");
    let data = ios
        .strip_prefix("square-commerce-v1://payment/create?data=")
        .expect("the iOS scheme and path");
    assert!(
        data.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "data is percent-encoded with only unreserved characters left: {data}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &percent_encoding::percent_decode_str(data)
            .decode_utf8()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["version"], "1.3");
    assert_eq!(json["client_id"], APPLICATION_ID);
    assert_eq!(
        json["callback_url"],
        format!("{}/enroll/callback", shop.public)
    );
    assert_eq!(json["amount_money"]["amount"], 1999, "a JSON number");
    assert_eq!(json["amount_money"]["currency_code"], "USD");
    assert_eq!(json["customer_id"], customer.as_str());
    assert_eq!(json["state"], token.as_str());
    assert_eq!(
        json["options"]["supported_tender_types"],
        serde_json::json!(["CREDIT_CARD"])
    );
    assert!(
        json.get("sdk_version").is_none(),
        "web pages send no sdk_version"
    );
    assert!(json["options"].get("allow_split_tender").is_none());

    // Android: intent:#Intent;action=…CHARGE;package=com.squareup;S.…;i.…TOTAL_AMOUNT;…;end
    let android = launch(&dom, "launch-android");
    let body = android
        .strip_prefix("intent:#Intent;")
        .and_then(|b| b.strip_suffix(";end"))
        .expect("intent start and end tokens");
    let extras: std::collections::HashMap<&str, String> = body
        .split(';')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (
                k,
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .unwrap()
                    .into_owned(),
            )
        })
        .collect();
    let want = [
        ("action", "com.squareup.pos.action.CHARGE".to_owned()),
        ("package", "com.squareup".to_owned()),
        ("S.browser_fallback_url", link.clone()),
        (
            "S.com.squareup.pos.WEB_CALLBACK_URI",
            format!("{}/enroll/callback", shop.public),
        ),
        ("S.com.squareup.pos.CLIENT_ID", APPLICATION_ID.to_owned()),
        ("S.com.squareup.pos.API_VERSION", "v2.0".to_owned()),
        ("i.com.squareup.pos.TOTAL_AMOUNT", "1999".to_owned()),
        ("S.com.squareup.pos.CURRENCY_CODE", "USD".to_owned()),
        (
            "S.com.squareup.pos.TENDER_TYPES",
            "com.squareup.pos.TENDER_CARD".to_owned(),
        ),
        ("S.com.squareup.pos.CUSTOMER_ID", customer.clone()),
        ("S.com.squareup.pos.REQUEST_METADATA", token.clone()),
    ];
    for (k, v) in &want {
        assert_eq!(extras.get(k), Some(v), "{k} in {android}");
    }
    assert!(
        !extras.keys().any(|k| k.contains("com.squareup.register")),
        "no v1 Register extras"
    );

    // The POS app completes the sale; the browser follows its callback to the page.
    let mut pos =
        reqwest::Url::parse(&format!("{}/_sim/pos/launch", shop.h.sim.base_url())).unwrap();
    pos.query_pairs_mut()
        .append_pair("url", &ios)
        .append_pair("outcome", "ok");
    let done = browse(pos.as_str(), "--dump-dom").await;
    assert!(
        done.contains("Card saved — next charge USD 19.99 on 28 Feb 2027"),
        "{done}"
    );
    let shot = screenshot(&link, "card-saved").await;
    // The README shows the page as a phone does.
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/docs/enroll-page.png");
    if std::env::var_os("PAYCRON_UPDATE_SCREENSHOTS").is_some() {
        std::fs::create_dir_all(readme.parent().unwrap()).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("enroll-open.png"),
            &readme,
        )
        .unwrap();
        std::fs::copy(&shot, readme.with_file_name("enroll-card-saved.png")).unwrap();
    }
    shop.close().await;
}
