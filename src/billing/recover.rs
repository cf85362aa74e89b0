//! Step 4 of the protocol, recovery, and the other ways a charge is finished after its first
//! answer: the one recovery path for charges left open (a bounded number of re-sends, a lookup
//! before re-sending an old one), reconcile's repair, and an operator's decision on a charge in
//! review.

use super::*;

impl Engine {
    pub(super) async fn redrive(
        &self,
        open: Vec<ChargeRow>,
        now: DateTime<Utc>,
    ) -> Result<Summary> {
        let mut mine = Vec::with_capacity(open.len());
        let mut summary = Summary::default();
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        for c in open {
            if charges::renew_lease(&mut conn, c.id, self.owner, self.lease_until()).await? {
                mine.push(c);
            } else {
                summary.fenced += 1;
            }
        }
        drop(conn);
        summary.merge(&self.drive_all(mine, now).await?);
        Ok(summary)
    }

    /// Takes over and finishes pending charges whose owner is gone: a dead process (its
    /// liveness lock dropped) or an expired lease. Charges older than the configured age are
    /// first looked up at Square by `reference_id`; the rest are re-sent byte for byte under
    /// their key, which Square answers with the original payment if one exists. Pending refunds
    /// are driven the same way ([`Engine::drive_refunds`]).
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn recover(&self, now: DateTime<Utc>) -> Result<Summary> {
        with_run_id(self.recover_pass(now)).await
    }

    #[tracing::instrument(skip_all, fields(owner = %self.owner))]
    async fn recover_pass(&self, now: DateTime<Utc>) -> Result<Summary> {
        let mut total = Summary::default();
        loop {
            let busy = self.leased.ids();
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            let orphans = charges::claim_orphans(
                &mut conn,
                self.clock.now(),
                self.owner,
                self.lease_until(),
                i64::from(self.config.batch_size),
                &busy,
            )
            .await?;
            drop(conn);
            if orphans.is_empty() {
                break;
            }
            tracing::info!(count = orphans.len(), "recovering pending charges");
            total.merge(&self.recover_charges(orphans, now).await?);
        }
        // Refunds the business asked for (from its app, or a CLI that died) go out here too.
        let r = self.drive_refunds(None).await?;
        if r.handled > 0 {
            tracing::info!(
                handled = r.handled,
                completed = r.completed,
                failed = r.failed,
                pending = r.pending,
                "refunds driven"
            );
        }
        Ok(total)
    }

    /// The one recovery path for charges of ours (taken over, or left open in this process):
    /// one sent [`MAX_RESENDS`] times without a decisive answer goes to review; one older than
    /// the stale age is looked up at Square first (Square keeps keys for an unpublished time, so
    /// a blind re-send could be a second payment); the rest are re-sent byte for byte.
    pub(super) async fn recover_charges(
        &self,
        open: Vec<ChargeRow>,
        now: DateTime<Utc>,
    ) -> Result<Summary> {
        let mut total = Summary::default();
        let stale_after = chrono::Duration::from_std(self.config.stale_lookup_after)
            .unwrap_or(chrono::Duration::hours(24));
        let mut resend = Vec::new();
        let mut give_up = Vec::new();
        for c in open {
            let age = self.clock.now() - c.created_at;
            if c.sends >= MAX_RESENDS {
                let reason = format!(
                    "no decisive answer from Square after {} sends over {} h; look the payment up in Square's dashboard by reference_id {}",
                    c.sends + 1,
                    age.num_hours(),
                    c.id
                );
                give_up.push(Attempted {
                    charge: c,
                    outcome: Some(PaymentOutcome::Undecided { reason }),
                    duration_ms: 0,
                    note: None,
                });
                continue;
            }
            if age > stale_after
                && let Some(s) = self.settle_from_lookup(&c, now).await?
            {
                total.merge(&s);
                continue;
            }
            resend.push(c);
        }
        if !give_up.is_empty() {
            total.merge(&self.record_batch(give_up, now).await?);
        }
        total.merge(&self.redrive(resend, now).await?);
        Ok(total)
    }

    /// Records a payment Square took for a still-pending charge (reconcile's repair), through
    /// the normal record path: the charge's lease is taken, then the outcome is recorded, fenced
    /// and idempotent. False when the charge was no longer pending.
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn repair(
        &self,
        charge: &ChargeRow,
        payment: &crate::domain::answer::ProviderPayment,
    ) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        if !charges::take_lease(&mut conn, charge.id, self.owner, self.lease_until()).await? {
            return Ok(false);
        }
        drop(conn);
        let found = Attempted::found_at_square(charge, payment);
        tracing::info!(charge_id = %charge.id, provider_payment_id = %payment.id(), "reconcile: recording a payment Square took");
        let s = self.record_batch(vec![found], self.clock.now()).await?;
        Ok(s.succeeded == 1)
    }

    /// Records an operator's decision on a charge in review, through the normal record path:
    /// `paid` with the Square payment that paid it, or `None` (no money taken: the period is
    /// billed again at once under a new key, without a dunning step). False when the charge
    /// was no longer in review.
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn resolve_review(
        &self,
        charge: &ChargeRow,
        paid: Option<String>,
        note: &str,
    ) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        if !charges::take_review(&mut conn, charge.id, self.owner, self.lease_until()).await? {
            return Ok(false);
        }
        drop(conn);
        let outcome = match paid {
            Some(payment_id) => PaymentOutcome::Succeeded {
                answer: Box::new(crate::domain::answer::Answer {
                    payment_id: payment_id.clone(),
                    status: "COMPLETED".into(),
                    amount_minor: charge.money.minor(),
                    currency: charge.money.currency().as_str().to_owned(),
                    customer_id: Some(charge.customer_id.to_string()),
                    card_id: charge.card_id.as_ref().map(ToString::to_string),
                    location_id: self.location_id.clone(),
                    reference_id: Some(charge.id.to_string()),
                }),
                payment_id,
            },
            None => PaymentOutcome::Voided,
        };
        let mut charge = charge.clone();
        charge.status = ChargeStatus::NeedsReview;
        tracing::info!(charge_id = %charge.id, decision = if matches!(outcome, PaymentOutcome::Voided) { "unpaid" } else { "paid" }, "recording an operator's decision on a charge in review");
        let s = self
            .record_batch(
                vec![Attempted {
                    charge,
                    outcome: Some(outcome),
                    duration_ms: 0,
                    note: Some(note.to_owned()),
                }],
                self.clock.now(),
            )
            .await?;
        Ok(s.fenced == 0 && s.attempted == 1)
    }

    /// Looks a stale charge up at Square (ListPayments over its time window, matched on
    /// `reference_id`). Records it when Square took the money; `None` means "not found, re-send".
    pub(super) async fn settle_from_lookup(
        &self,
        c: &ChargeRow,
        now: DateTime<Utc>,
    ) -> Result<Option<Summary>> {
        let begin = c.created_at - chrono::Duration::minutes(5);
        let end = self.clock.now() + chrono::Duration::minutes(5);
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .gateway
                .list_payments(begin, end, cursor.as_deref())
                .await?;
            if let Some(p) = page
                .items
                .iter()
                .find(|p| p.charge_id() == Some(c.id) && p.taken)
            {
                let found = Attempted::found_at_square(c, p);
                tracing::info!(charge_id = %c.id, provider_payment_id = %p.id(), "stale charge found at Square");
                return Ok(Some(self.record_batch(vec![found], now).await?));
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }
}
