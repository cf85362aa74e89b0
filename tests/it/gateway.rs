//! The Square client against the spec subset and, over real HTTP, against the simulator.

use std::time::Duration;

use paycron::domain::decline::{ErrorClass, classify};
use paycron::domain::{CardId, ChargeId, CustomerId, IdempotencyKey, Money, SubscriptionId};
use paycron::gateway::wire;
use paycron::gateway::{GatewayError, PaymentOutcome, PreparedPayment};
use paycron::simulator::{Faults, SimConfig};
use serde_json::Value;

use crate::helpers::{client, config, sim};

fn spec() -> Value {
    serde_json::from_str(include_str!("../fixtures/square-openapi-subset.json")).unwrap()
}

fn payment(card: &str, customer: &str, amount: i64, currency: &str) -> PreparedPayment {
    let key = IdempotencyKey::derive(SubscriptionId::new(), 0, 1).unwrap();
    // Built by hand rather than through `card_on_file`, which refuses the zero amounts and
    // unknown currencies these tests send to see the simulator refuse them as Square does.
    let body = serde_json::to_string(&wire::CreatePaymentRequest {
        source_id: card.to_owned(),
        idempotency_key: key.as_str().to_owned(),
        amount_money: wire::Money {
            amount,
            currency: currency.to_owned(),
        },
        customer_id: Some(customer.to_owned()),
        location_id: None,
        reference_id: Some(ChargeId::new().to_string()),
        autocomplete: Some(true),
        note: None,
    })
    .unwrap();
    PreparedPayment { key, body }
}

#[test]
fn create_payment_body_follows_the_spec() {
    let spec = spec();
    let schema = &spec["schemas"]["CreatePaymentRequest"];
    let card: CardId = "ccof:GaJGNaZa8x4OgDJn4GB".parse().unwrap();
    let customer: CustomerId = "W92WH6P11H4Z77CTET0RNTGFW8".parse().unwrap();
    let money = Money::new(1000, "USD".parse().unwrap()).unwrap();
    let p = PreparedPayment::card_on_file(
        IdempotencyKey::derive(SubscriptionId::new(), 99_999, 999).unwrap(),
        &card,
        &customer,
        money,
        ChargeId::new(),
        Some("L88917AVBK2S5"),
    )
    .unwrap();
    let body: Value = serde_json::from_str(&p.body).unwrap();
    for req in schema["required"].as_array().unwrap() {
        assert!(
            body.get(req.as_str().unwrap()).is_some(),
            "required {req} missing"
        );
    }
    for (k, v) in body.as_object().unwrap() {
        let prop = &schema["properties"][k];
        assert!(
            prop.is_object(),
            "{k} is not a CreatePaymentRequest property"
        );
        if let Some(s) = v.as_str() {
            if let Some(max) = prop["maxLength"].as_u64() {
                assert!(s.chars().count() as u64 <= max, "{k} longer than {max}");
            }
            if let Some(min) = prop["minLength"].as_u64() {
                assert!(s.chars().count() as u64 >= min, "{k} shorter than {min}");
            }
        }
    }
    assert!(body["amount_money"]["amount"].is_i64());
    assert_eq!(body["amount_money"]["currency"], "USD");
    assert_eq!(body["autocomplete"], true);
    assert!(body["reference_id"].as_str().unwrap().len() <= 40);
    // The same inputs give the same bytes: what recovery re-sends is identical.
    assert_eq!(
        p.body,
        PreparedPayment::card_on_file(
            p.key.clone(),
            &card,
            &customer,
            money,
            body["reference_id"].as_str().unwrap().parse().unwrap(),
            Some("L88917AVBK2S5")
        )
        .unwrap()
        .body
    );
}

#[test]
fn every_example_in_the_spec_subset_parses() {
    let spec = spec();
    let ex = &spec["examples"];
    let parse = |name: &str| -> Result<(), String> {
        let v = ex[name].clone();
        let r = match name {
            "CreatePaymentRequest" => {
                serde_json::from_value::<wire::CreatePaymentRequest>(v).map(|_| ())
            }
            "CreatePaymentResponse" | "GetPaymentResponse" => {
                serde_json::from_value::<wire::PaymentResponse>(v).map(|_| ())
            }
            "ListCardsResponse" => serde_json::from_value::<wire::ListCardsResponse>(v).map(|_| ()),
            "ListCustomersResponse" => {
                serde_json::from_value::<wire::ListCustomersResponse>(v).map(|_| ())
            }
            "ListPaymentsResponse" => {
                serde_json::from_value::<wire::ListPaymentsResponse>(v).map(|_| ())
            }
            "DisableCardResponse" => {
                serde_json::from_value::<wire::Card>(v["card"].clone()).map(|_| ())
            }
            "RetrieveCustomerResponse" => {
                serde_json::from_value::<wire::Customer>(v["customer"].clone()).map(|_| ())
            }
            "SearchCustomersResponse" => {
                serde_json::from_value::<wire::ListCustomersResponse>(v).map(|_| ())
            }
            _ => return Ok(()),
        };
        r.map_err(|e| format!("{name}: {e}"))
    };
    let mut parsed = 0;
    for name in ex.as_object().unwrap().keys() {
        parse(name).unwrap();
        parsed += 1;
    }
    assert!(parsed >= 9);
    let cards: wire::ListCardsResponse =
        serde_json::from_value(ex["ListCardsResponse"].clone()).unwrap();
    assert_eq!(
        cards.cards[0].id.as_deref(),
        Some("ccof:uIbfJXhXETSP197M3GB")
    );
    let pay: wire::PaymentResponse =
        serde_json::from_value(ex["CreatePaymentResponse"].clone()).unwrap();
    assert_eq!(pay.payment.unwrap().status, "COMPLETED");
}

#[test]
fn every_error_code_in_the_spec_maps_to_a_class() {
    let spec = spec();
    let elements = spec["schemas_extra"]["ErrorCode"]["x-enum-elements"]
        .as_array()
        .unwrap();
    assert!(elements.len() > 100);
    for e in elements {
        let code = e["name"].as_str().unwrap();
        let category = e["error-category"].as_str().unwrap_or("");
        let class = classify(category, code);
        let expected_ok = match category {
            "PAYMENT_METHOD_ERROR" if code == "TEMPORARY_ERROR" => class == ErrorClass::Transient,
            // The seller's location, not the card.
            "PAYMENT_METHOD_ERROR" if code == "INVALID_LOCATION" => {
                class == ErrorClass::Configuration
            }
            "PAYMENT_METHOD_ERROR" => matches!(class, ErrorClass::Declined { .. }),
            "API_ERROR" | "RATE_LIMIT_ERROR" => class == ErrorClass::Transient,
            "AUTHENTICATION_ERROR" => class == ErrorClass::Authentication,
            // Never a soft decline, never the token.
            "INVALID_REQUEST_ERROR" => !matches!(
                class,
                ErrorClass::Authentication | ErrorClass::Declined { hard: false }
            ),
            // Anything else is never a decline.
            _ => matches!(class, ErrorClass::Configuration | ErrorClass::Transient),
        };
        assert!(expected_ok, "{category}/{code} -> {class:?}");
    }
    assert_eq!(
        classify("PAYMENT_METHOD_ERROR", "CARD_EXPIRED"),
        ErrorClass::Declined { hard: true }
    );
    assert_eq!(
        classify("PAYMENT_METHOD_ERROR", "INSUFFICIENT_FUNDS"),
        ErrorClass::Declined { hard: false }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_takes_declines_and_replays_keys_like_square() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| {
        st.add_card("C1", "ccof:sim-ok-1", "VISA", true);
        st.add_card("C1", "ccof:sim-insufficient-funds-1", "VISA", true);
        st.add_card("C1", "ccof:sim-card-expired-1", "VISA", true);
        st.add_card("C1", "ccof:sim-decline-first-2-1", "VISA", true);
        st.add_card("C2", "ccof:sim-ok-2", "VISA", false);
    });
    let c = client(&config(&s.base_url()));
    let ok = payment("ccof:sim-ok-1", "C1", 1500, "USD");
    let first = c.create_payment(&ok).await;
    let PaymentOutcome::Succeeded { payment_id, .. } = first.clone() else {
        panic!("{first:?}")
    };
    // Same key, same body: the original payment, not a new one.
    assert_eq!(c.create_payment(&ok).await, first);
    assert_eq!(s.with(|st| st.completed().len()), 1);
    // Same key, changed body: IDEMPOTENCY_KEY_REUSED.
    let changed = PreparedPayment {
        body: ok.body.replace("1500", "1600"),
        ..ok.clone()
    };
    assert!(matches!(
        c.create_payment(&changed).await,
        PaymentOutcome::KeyReused { .. }
    ));
    assert_eq!(s.with(|st| st.completed().len()), 1);
    assert_eq!(
        c.get_payment(&payment_id)
            .await
            .unwrap()
            .unwrap()
            .answer
            .status,
        "COMPLETED"
    );
    assert!(c.get_payment("NOPE").await.unwrap().is_none());

    let d = c
        .create_payment(&payment("ccof:sim-insufficient-funds-1", "C1", 1500, "USD"))
        .await;
    assert_eq!(
        d,
        PaymentOutcome::Declined {
            code: "INSUFFICIENT_FUNDS".into(),
            category: "PAYMENT_METHOD_ERROR".into(),
            hard: false
        }
    );
    let d = c
        .create_payment(&payment("ccof:sim-card-expired-1", "C1", 1500, "USD"))
        .await;
    assert!(
        matches!(d, PaymentOutcome::Declined { hard: true, .. }),
        "{d:?}"
    );
    for expect_ok in [false, false, true] {
        let r = c
            .create_payment(&payment("ccof:sim-decline-first-2-1", "C1", 1500, "USD"))
            .await;
        assert_eq!(
            matches!(r, PaymentOutcome::Succeeded { .. }),
            expect_ok,
            "{r:?}"
        );
    }
    let d = c
        .create_payment(&payment("ccof:sim-ok-2", "C2", 1500, "USD"))
        .await;
    assert!(
        matches!(d, PaymentOutcome::Declined { hard: true, .. }),
        "disabled card: {d:?}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_taken_is_money_taken_whatever_errors_ride_along() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| {
        st.add_card("C1", "ccof:sim-ok-1", "VISA", true);
        st.faults.errors_with_payment = true;
    });
    let c = client(&config(&s.base_url()));
    let outcome = c
        .create_payment(&payment("ccof:sim-ok-1", "C1", 100, "USD"))
        .await;
    assert!(
        matches!(outcome, PaymentOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_validates_like_square() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| {
        st.add_card("C1", "ccof:sim-ok-1", "VISA", true);
        st.add_card("C2", "ccof:sim-ok-2", "VISA", true);
    });
    let c = client(&config(&s.base_url()));
    let fatal_code = |o: PaymentOutcome| match o {
        PaymentOutcome::Misconfigured { code, .. } => code,
        other => panic!("{other:?}"),
    };
    let card_code = |o: PaymentOutcome| match o {
        PaymentOutcome::Declined {
            code, hard: true, ..
        } => code,
        other => panic!("{other:?}"),
    };
    // Wrong customer for the card and an unknown card: that card's problem (a hard decline).
    assert_eq!(
        card_code(
            c.create_payment(&payment("ccof:sim-ok-1", "C2", 100, "USD"))
                .await
        ),
        "INVALID_VALUE"
    );
    assert_eq!(
        card_code(
            c.create_payment(&payment("ccof:nope", "C1", 100, "USD"))
                .await
        ),
        "NOT_FOUND"
    );
    // Amount 0, a currency the location cannot take, an oversized key or reference, a missing
    // customer: the request's shape or the seller's setup (configuration).
    assert_eq!(
        fatal_code(
            c.create_payment(&payment("ccof:sim-ok-1", "C1", 0, "USD"))
                .await
        ),
        "VALUE_TOO_LOW"
    );
    assert_eq!(
        fatal_code(
            c.create_payment(&payment("ccof:sim-ok-1", "C1", 100, "EUR"))
                .await
        ),
        "INVALID_VALUE"
    );
    // Key over 45 and reference over 40, and a missing customer, sent raw.
    let mut raw: Value =
        serde_json::from_str(&payment("ccof:sim-ok-1", "C1", 100, "USD").body).unwrap();
    let key = IdempotencyKey::from_string("k".repeat(45)).unwrap();
    raw["idempotency_key"] = "k".repeat(46).into();
    let long_key = PreparedPayment {
        key: key.clone(),
        body: raw.to_string(),
    };
    assert_eq!(
        fatal_code(c.create_payment(&long_key).await),
        "VALUE_TOO_LONG"
    );
    raw["idempotency_key"] = "k2".into();
    raw["reference_id"] = "r".repeat(41).into();
    assert_eq!(
        fatal_code(
            c.create_payment(&PreparedPayment {
                key: key.clone(),
                body: raw.to_string()
            })
            .await
        ),
        "VALUE_TOO_LONG"
    );
    raw["idempotency_key"] = "k3".into();
    raw["reference_id"] = "r".into();
    raw.as_object_mut().unwrap().remove("customer_id");
    assert_eq!(
        fatal_code(
            c.create_payment(&PreparedPayment {
                key,
                body: raw.to_string()
            })
            .await
        ),
        "MISSING_REQUIRED_PARAMETER"
    );
    assert!(s.with(|st| st.completed().is_empty()));

    // A bearer token the simulator does not accept.
    let s2 = sim(SimConfig {
        token: Some("right".into()),
        ..SimConfig::default()
    })
    .await;
    let c2 = client(&config(&s2.base_url()));
    match c2
        .create_payment(&payment("ccof:x", "C1", 100, "USD"))
        .await
    {
        PaymentOutcome::Fatal { category, .. } => assert_eq!(category, "AUTHENTICATION_ERROR"),
        other => panic!("{other:?}"),
    }
    let err = c2.list_customers(None).await.unwrap_err();
    assert!(matches!(err, GatewayError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("SQUARE_ACCESS_TOKEN was rejected by Square")
    );
    assert!(!err.to_string().contains("test-token-not-secret"));
    s.shutdown().await;
    s2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_resend_the_same_key_and_bytes() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("C1", "ccof:sim-ok-1", "VISA", true));
    let c = client(&config(&s.base_url()));
    for faults in [
        Faults {
            error_5xx_rate: 0.3,
            ..Faults::default()
        },
        Faults {
            rate_429_rate: 0.3,
            ..Faults::default()
        },
        Faults {
            lose_response_rate: 0.3,
            ..Faults::default()
        },
        Faults {
            garbage_rate: 0.3,
            ..Faults::default()
        },
    ] {
        s.with(|st| st.faults = faults.clone());
        for _ in 0..5 {
            let p = payment("ccof:sim-ok-1", "C1", 700, "USD");
            let before = s.with(|st| st.requests().len());
            let outcome = c.create_payment(&p).await;
            assert!(
                matches!(outcome, PaymentOutcome::Succeeded { .. }),
                "{faults:?}: {outcome:?}"
            );
            let sent: Vec<String> = s.with(|st| {
                st.requests()[before..]
                    .iter()
                    .map(|r| r.body.clone())
                    .collect()
            });
            assert!(
                sent.iter().all(|b| b == &p.body),
                "every retry re-sends identical bytes"
            );
        }
    }
    // Each key took exactly one payment, whatever was lost on the way.
    let payments = s.with(|st| st.completed());
    let mut refs: Vec<_> = payments.iter().map(|p| p.reference_id.clone()).collect();
    refs.sort();
    refs.dedup();
    assert_eq!(refs.len(), payments.len());
    assert_eq!(payments.len(), 20);

    // Declines are not retried.
    s.with(|st| {
        st.faults = Faults::default();
        st.add_card("C1", "ccof:sim-generic-decline-1", "VISA", true);
    });
    let before = s.with(|st| st.requests().len());
    let d = c
        .create_payment(&payment("ccof:sim-generic-decline-1", "C1", 700, "USD"))
        .await;
    assert!(matches!(d, PaymentOutcome::Declined { .. }));
    assert_eq!(s.with(|st| st.requests().len()) - before, 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_holds_and_retry_after_is_honoured() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| {
        st.add_card("C1", "ccof:sim-ok-1", "VISA", true);
        st.faults = Faults {
            rate_429_rate: 1.0,
            retry_after_secs: Some(30),
            ..Faults::default()
        };
    });
    let mut cfg = config(&s.base_url());
    cfg.square.retry_deadline = Duration::from_secs(2);
    let c = client(&cfg);
    // Retry-After 30 s is beyond the 2 s deadline: one request, then a Transient outcome.
    let before = s.with(|st| st.hits);
    let r = c
        .create_payment(&payment("ccof:sim-ok-1", "C1", 700, "USD"))
        .await;
    assert!(
        matches!(r, PaymentOutcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(30)),
        "{r:?}"
    );
    assert_eq!(
        s.with(|st| st.hits) - before,
        1,
        "no retry before Retry-After"
    );
    assert!(s.with(|st| st.completed().is_empty()));
    // Without Retry-After, the client keeps retrying until the deadline, then gives up.
    s.with(|st| {
        st.faults = Faults {
            error_5xx_rate: 1.0,
            ..Faults::default()
        }
    });
    let before = s.with(|st| st.hits);
    let r = c
        .create_payment(&payment("ccof:sim-ok-1", "C1", 700, "USD"))
        .await;
    assert!(
        matches!(
            r,
            PaymentOutcome::Transient {
                retry_after: None,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(
        s.with(|st| st.hits) - before > 2,
        "retried within the deadline"
    );
    // With Retry-After 1 s inside a 2 s deadline, the client waits and tries again.
    s.with(|st| {
        st.faults = Faults {
            rate_429_rate: 1.0,
            retry_after_secs: Some(1),
            ..Faults::default()
        }
    });
    let before = s.with(|st| st.hits);
    let _ = c
        .create_payment(&payment("ccof:sim-ok-1", "C1", 700, "USD"))
        .await;
    assert_eq!(
        s.with(|st| st.hits) - before,
        2,
        "waited Retry-After between the two tries"
    );
    // A lost answer after the payment was taken is Unknown at the deadline, never a failure.
    s.with(|st| {
        st.faults = Faults {
            lose_response_rate: 1.0,
            ..Faults::default()
        }
    });
    let r = c
        .create_payment(&payment("ccof:sim-ok-1", "C1", 700, "USD"))
        .await;
    assert!(matches!(r, PaymentOutcome::Unknown { .. }), "{r:?}");
    assert_eq!(s.with(|st| st.completed().len()), 1);
    s.shutdown().await;

    // Square unreachable: the read calls name the URL.
    let mut cfg = config("http://127.0.0.1:9");
    cfg.square.retry_deadline = Duration::from_millis(300);
    let err = client(&cfg).list_customers(None).await.unwrap_err();
    assert!(matches!(err, GatewayError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out_and_the_same_key_gets_the_original_payment() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| {
        st.add_card("C1", "ccof:sim-ok-1", "VISA", true);
        st.faults = Faults {
            slow_rate: 0.5,
            slow_ms: 1500,
            ..Faults::default()
        };
    });
    let mut cfg = config(&s.base_url());
    cfg.square.request_timeout = Duration::from_millis(500);
    cfg.square.retry_deadline = Duration::from_secs(10);
    let c = client(&cfg);
    for _ in 0..4 {
        let p = payment("ccof:sim-ok-1", "C1", 700, "USD");
        let r = c.create_payment(&p).await;
        assert!(matches!(r, PaymentOutcome::Succeeded { .. }), "{r:?}");
    }
    let payments = s.with(|st| st.completed());
    assert_eq!(payments.len(), 4, "one payment per key, however many tries");
    s.shutdown().await;
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let cfg = config("http://127.0.0.1:1");
    let client = paycron::gateway::square::SquareClient::new(&cfg.square).unwrap();
    for text in [
        format!("{cfg:?}"),
        format!("{client:?}"),
        format!("{:?}", cfg.square),
    ] {
        assert!(!text.contains("test-token-not-secret"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_refunds_like_square_never_beyond_what_was_taken() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("RF", "ccof:sim-ok-rf", "VISA", true));
    let taken = client(&config(&s.base_url()))
        .create_payment(&payment("ccof:sim-ok-rf", "RF", 1000, "USD"))
        .await;
    let PaymentOutcome::Succeeded { payment_id, .. } = taken else {
        panic!("{taken:?}")
    };
    let http = reqwest::Client::new();
    let refund = |key: &str, amount: i64, currency: &str| {
        let body = serde_json::to_string(&wire::RefundPaymentRequest {
            idempotency_key: key.to_owned(),
            amount_money: wire::Money {
                amount,
                currency: currency.to_owned(),
            },
            payment_id: payment_id.clone(),
            reason: Some("asked for it back".into()),
        })
        .unwrap();
        let req = http
            .post(format!("{}/v2/refunds", s.base_url()))
            .bearer_auth("test-token-not-secret")
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<wire::RefundResponse>().await.unwrap())
        }
    };
    let code = |r: &wire::RefundResponse| r.errors.first().map(|e| e.code.clone());

    // A partial refund is PENDING when made; the same key and body get the same refund.
    let (status, first) = refund("rf-1", 600, "USD").await;
    assert_eq!(status, 200, "{first:?}");
    let made = first.refund.clone().unwrap();
    assert_eq!(made.status.as_deref(), Some("PENDING"));
    assert_eq!(made.payment_id.as_deref(), Some(payment_id.as_str()));
    assert_eq!(refund("rf-1", 600, "USD").await.1, first);
    assert_eq!(
        code(&refund("rf-1", 500, "USD").await.1).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    // More than what is left (1000 - 600), another currency, nothing: refused, nothing made.
    for (amount, currency, want) in [
        (401, "USD", "REFUND_AMOUNT_INVALID"),
        (0, "USD", "REFUND_AMOUNT_INVALID"),
        (100, "EUR", "INVALID_VALUE"),
    ] {
        let (status, r) = refund(&format!("rf-{amount}-{currency}"), amount, currency).await;
        assert_eq!((status, code(&r).as_deref()), (400, Some(want)));
    }
    // The rest can be refunded; reading settles both.
    let (status, second) = refund("rf-2", 400, "USD").await;
    assert_eq!(status, 200, "{second:?}");
    let got: wire::RefundResponse = http
        .get(format!("{}/v2/refunds/{}", s.base_url(), made.id))
        .bearer_auth("test-token-not-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got.refund.unwrap().status.as_deref(), Some("COMPLETED"));
    let all: Vec<i64> = s.with(|st| st.refunds().iter().map(|r| r.amount_money.amount).collect());
    assert_eq!(all, [600, 400]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_are_created_once_and_a_counter_sale_is_found_through_its_order() {
    let s = sim(SimConfig::default()).await;
    let c = client(&config(&s.base_url()));
    let new = paycron::gateway::NewCustomer {
        idempotency_key: "enroll-1".into(),
        given_name: Some("Ada".into()),
        family_name: Some("Lovelace".into()),
        email: Some("ada@example.com".into()),
        phone: None,
    };
    let first = c.create_customer(&new).await.unwrap();
    // The same key: the same customer, not a second one.
    assert_eq!(c.create_customer(&new).await.unwrap(), first);
    // Square's rules: a name, email or phone; a well-formed email.
    let nameless = paycron::gateway::NewCustomer {
        idempotency_key: "enroll-2".into(),
        ..Default::default()
    };
    let err = c.create_customer(&nameless).await.unwrap_err();
    assert!(
        err.to_string().contains("MISSING_REQUIRED_PARAMETER"),
        "{err}"
    );
    let bad_email = paycron::gateway::NewCustomer {
        idempotency_key: "enroll-3".into(),
        email: Some("not-an-email".into()),
        ..Default::default()
    };
    let err = c.create_customer(&bad_email).await.unwrap_err();
    assert!(err.to_string().contains("INVALID_EMAIL_ADDRESS"), "{err}");

    // A sale at the counter, the card saved after checkout.
    let sale = s
        .with(|st| st.pos_sale(&first.id, 1999, "USD", true))
        .unwrap();
    let order = c.retrieve_order(&sale.order_id).await.unwrap().unwrap();
    assert_eq!(order.customer_id.as_deref(), Some(first.id.as_str()));
    assert_eq!(order.card_payments.len(), 1);
    let paid = &order.card_payments[0];
    assert_eq!(
        (paid.payment_id.as_str(), paid.amount_minor),
        (sale.payment_id.as_str(), 1999)
    );
    let payment = c.get_payment(&paid.payment_id).await.unwrap().unwrap();
    assert!(payment.taken);
    assert_eq!(
        payment.answer.customer_id.as_deref(),
        Some(first.id.as_str())
    );
    assert_eq!(
        payment.charge_id(),
        None,
        "a counter sale names no paycron charge"
    );
    let cards = c.list_cards(&first.id, None, false).await.unwrap();
    assert_eq!(cards.items.len(), 1);
    assert_eq!(cards.items[0].id, sale.saved_card);
    let note: serde_json::Value = serde_json::from_str(&sale.card_created.unwrap()).unwrap();
    assert_eq!(note["type"], "card.created");
    assert_eq!(
        note["data"]["object"]["card"]["customer_id"],
        first.id.as_str()
    );
    assert!(c.retrieve_order("NOPE").await.unwrap().is_none());
    s.shutdown().await;
}
