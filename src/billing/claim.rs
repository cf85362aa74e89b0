//! Step 1 of the protocol, the claim: due subscriptions are locked (`FOR UPDATE SKIP LOCKED`),
//! the lifecycle decides each one's move and attempt, and the charges are written with their
//! leases in the same transaction, so a pending charge is durable before any money moves. A row the
//! engine cannot read or move is quarantined, never a reason to fail the claim. A pass's claims
//! walk the due order past the last row claimed (not again over the rows earlier claims left in
//! flight), and once more from the start before the pass ends, so no due row is left behind.

use super::*;

/// What the lifecycle decided for one claimed subscription.
pub(super) struct Planned {
    /// The new position, when it moved (skipped periods, completion, cancel at period end).
    pub(super) moved: Option<PositionUpdate>,
    /// The events the move causes.
    pub(super) notices: Vec<Notice>,
    /// The charge to write, when an attempt is due.
    pub(super) charge: Option<NewCharge>,
}

/// One claimed batch: its charges, and the subscriptions moved without a charge.
pub(super) struct Claimed {
    pub(super) charges: Vec<Queued>,
    pub(super) summary: Summary,
}

/// The decline category of attempts paycron refused itself before calling Square.
pub const CARD_CHECK_CATEGORY: &str = "PAYCRON_CARD_CHECK";

/// Why a card cannot be charged at `now` (in the subscription's zone), if it cannot: disabled
/// or forgotten at Square, or past the end of its expiry month.
pub fn card_problem(
    health: Option<(bool, Option<i32>, Option<i32>)>,
    now: DateTime<Utc>,
    zone: chrono_tz::Tz,
) -> Option<&'static str> {
    use chrono::Datelike;
    let (enabled, month, year) = health?;
    if !enabled {
        return Some("CARD_DISABLED");
    }
    let local = now.with_timezone(&zone);
    match (month, year) {
        (Some(m), Some(y)) if (local.year(), local.month() as i32) > (y, m) => Some("CARD_EXPIRED"),
        _ => None,
    }
}

impl Engine {
    pub(super) fn plan(&self, sub: &SubscriptionRow, now: DateTime<Utc>) -> Result<Planned> {
        let build = |reason: String| BillingError::Build {
            subscription: sub.id,
            reason,
        };
        let terms = sub.terms()?;
        let before = sub.state()?;
        let settled = lifecycle::settle(&terms, &before, now, self.config.max_catch_up_periods)
            .map_err(|e| build(e.to_string()))?;
        let moved = settled.moved(&before).then(|| PositionUpdate {
            state: settled.state.clone(),
            card_id: sub.card_id.clone(),
        });
        let charge = match settled.bill {
            None => None,
            Some(bill) => {
                // Only a subscription awaiting its counter card has none, and it is never due.
                let card = sub
                    .card_id
                    .clone()
                    .ok_or_else(|| build("no card on file".into()))?;
                let key = IdempotencyKey::derive(sub.id, bill.period, bill.attempt)
                    .map_err(|e| build(e.to_string()))?;
                let id = ChargeId::new();
                let prepared = PreparedPayment::card_on_file(
                    key,
                    &card,
                    &sub.customer_id,
                    sub.money,
                    id,
                    self.location_id.as_deref(),
                )
                .map_err(|e| build(e.to_string()))?;
                let int = |v: u32| i32::try_from(v).map_err(|e| build(e.to_string()));
                Some(NewCharge {
                    id,
                    subscription_id: sub.id,
                    period: int(bill.period)?,
                    period_start: bill.period_start,
                    attempt: int(bill.attempt)?,
                    customer_id: sub.customer_id.clone(),
                    card_id: card,
                    money: sub.money,
                    request_fingerprint: prepared.fingerprint(),
                    idempotency_key: prepared.key,
                    request_body: prepared.body,
                })
            }
        };
        Ok(Planned {
            moved,
            notices: settled.notices,
            charge,
        })
    }

    /// Step 1 for one batch: locks up to `batch_size` due subscriptions as of `now` and, in
    /// the same transaction, writes their charges (or moves those with nothing to charge).
    /// `None` when nothing was due (or shutdown began).
    ///
    /// Long on purpose: one transaction, read top to bottom: lock, plan, write the charges, move the rest; splitting it would scatter the transaction's steps.
    #[tracing::instrument(skip_all, fields(owner = %self.owner))]
    pub(super) async fn claim_batch(
        &self,
        now: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<Option<Claimed>> {
        if self.cancel.is_cancelled()
            || self.breaker().halted().is_some()
            || !self.check_liveness().await
        {
            return Ok(None);
        }
        let limit = i64::from(self.config.batch_size);
        let mut unreadable = 0;
        let (mut tx, due) = loop {
            let mut tx = crate::store::begin_batch(&self.pool).await?;
            let after = progress.after;
            match subscriptions::claim_due(&mut tx, now, limit, &progress.excluded, after).await {
                // Nothing due past the last row claimed: once more from the start, for rows
                // skipped behind it, before the pass may end.
                Ok(due) if due.is_empty() && after.is_some() => {
                    tx.rollback().await.map_err(StoreError::from)?;
                    progress.after = None;
                }
                Ok(due) => break (tx, due),
                // Some due row cannot be read at all: find it one row at a time, quarantine it
                // (committed on its own), and claim again.
                Err(e) if e.is_unreadable_row() => {
                    let ids = subscriptions::claim_due_ids(
                        &mut tx,
                        now,
                        limit,
                        &progress.excluded,
                        after,
                    )
                    .await?;
                    let mut found = 0;
                    for id in ids {
                        if let Err(why) = subscriptions::get(&mut tx, id).await
                            && why.is_unreadable_row()
                        {
                            self.quarantine(&mut tx, id, None, &why.to_string()).await?;
                            found += 1;
                        }
                    }
                    if found == 0 {
                        return Err(e.into());
                    }
                    tx.commit().await.map_err(StoreError::from)?;
                    unreadable += found;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut summary = Summary {
            quarantined: unreadable,
            ..Summary::default()
        };
        if due.is_empty() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok((unreadable > 0).then(|| Claimed {
                charges: vec![],
                summary,
            }));
        }
        progress.after = due
            .iter()
            .filter_map(|c| Some((c.row.next_due_at?, c.row.id)))
            .max();
        let mut charges = Vec::with_capacity(due.len());
        let mut moved = std::collections::HashSet::new();
        let mut notices = Vec::new();
        for claimed in &due {
            let sub = &claimed.row;
            if sub.updated_at >= progress.counted_since {
                let claims = progress.claims.entry(sub.id).or_default();
                *claims += 1;
                if *claims > progress.limit {
                    progress.set_aside(sub.id, "claimed_too_often");
                    continue;
                }
            }
            let planned = match self.plan(sub, now) {
                Ok(p) => p,
                Err(e) => {
                    self.quarantine(&mut tx, sub.id, Some(&sub.customer_id), &e.to_string())
                        .await?;
                    summary.quarantined += 1;
                    continue;
                }
            };
            if let Some(update) = &planned.moved {
                subscriptions::set_position(&mut tx, sub.id, update).await?;
                moved.insert(sub.id);
                if planned.charge.is_none() {
                    summary.advanced_without_charge += 1;
                }
            }
            for n in &planned.notices {
                notices.push(NewEvent {
                    kind: n.kind(),
                    subscription_id: Some(sub.id),
                    customer_id: Some(sub.customer_id.clone()),
                    charge_id: None,
                    payload: notice_payload(n),
                });
            }
            if let Some(c) = planned.charge {
                charges.push(c);
            }
        }
        events::emit_many(&mut tx, &notices).await?;
        // (charge, subscription) of each charge planned, for those the insert skips.
        let planned: Vec<(ChargeId, SubscriptionId)> =
            charges.iter().map(|c| (c.id, c.subscription_id)).collect();
        let inserted =
            charges::insert_charges(&mut tx, charges, self.owner, self.lease_until()).await?;
        let ids: std::collections::HashSet<ChargeId> = inserted.iter().map(|c| c.id).collect();
        tx.commit().await.map_err(StoreError::from)?;
        // A subscription that was due, had an attempt to make and neither got its charge nor
        // moved would be claimed again at once: set it aside so the run always ends.
        for (charge, sub) in planned {
            if !ids.contains(&charge) && !moved.contains(&sub) {
                progress.set_aside(sub, "no_progress");
            }
        }
        let by_sub: HashMap<SubscriptionId, &subscriptions::ClaimedRow> =
            due.iter().map(|c| (c.row.id, c)).collect();
        // Each charge is the row as inserted, with its card's pre-check.
        let charges: Vec<Queued> = inserted
            .into_iter()
            .map(|charge| {
                let claimed = by_sub.get(&charge.subscription_id);
                let zone = claimed
                    .and_then(|c| c.row.time_zone.parse::<chrono_tz::Tz>().ok())
                    .unwrap_or(chrono_tz::Tz::UTC);
                let problem = card_problem(claimed.and_then(|c| c.card_health()), now, zone)
                    .map(str::to_owned);
                Queued { charge, problem }
            })
            .collect();
        Ok(Some(Claimed { charges, summary }))
    }

    /// Quarantines a subscription the engine cannot read or move, in the caller's
    /// transaction: it is claimed no more until an operator releases it; billing goes on for
    /// everyone else.
    pub(crate) async fn quarantine(
        &self,
        conn: &mut PgConnection,
        id: SubscriptionId,
        customer: Option<&CustomerId>,
        reason: &str,
    ) -> Result<()> {
        if subscriptions::quarantine(conn, id, reason).await? {
            tracing::error!(
                subscription_id = %id, reason,
                "subscription quarantined: the engine cannot read or move it; billing goes on for the others (fix it, then `paycron subscription release ID`)"
            );
            metrics::counter!(crate::ops::metrics::QUARANTINED).increment(1);
            events::emit_many(
                conn,
                &[NewEvent {
                    kind: "subscription_needs_attention",
                    subscription_id: Some(id),
                    customer_id: customer.cloned(),
                    charge_id: None,
                    payload: serde_json::json!({ "reason": reason }),
                }],
            )
            .await?;
        }
        Ok(())
    }
}
