//! Money going back: the refund protocol, the charge protocol's twin.
//!
//! 1. **Written first.** `paycron.refund_charge()` writes the refund — key and exact body
//!    included — under the database's cap, in the caller's transaction, before any call.
//! 2. **Sent under a lease.** A worker leases a pending refund, counts the send, then calls
//!    RefundPayment with the stored bytes; transient failures are retried with the same key.
//! 3. **Settled once.** Square's answer is checked (the payment and amount asked for); a
//!    settled status (COMPLETED, REJECTED, FAILED, or a refused request) is written with its
//!    ledger entry and event in one transaction fenced on `pending`; Square's PENDING keeps the
//!    refund open with Square's id, and it is looked up (never re-sent) until it settles — or
//!    the `refund.updated` webhook settles it first.
//! 4. **Recovered.** A refund whose lease ran out (a crash, an undecided answer) is taken again:
//!    past the stale age it is first looked for at Square (ListPaymentRefunds: the same payment
//!    and amount, created after it was written, not another refund's), then re-sent with the
//!    same key and body, which Square answers with the refund it already made.

use chrono::{DateTime, Utc};

use super::{BillingError, Engine, Result};
use crate::domain::RefundId;
use crate::domain::refund::{ProviderRefund, RefundStatus};
use crate::gateway::{PreparedRefund, RefundOutcome};
use crate::store::StoreError;
use crate::store::refunds::{self, RefundRow};

/// What one pass over refunds did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefundSummary {
    /// Refunds sent or looked up.
    pub handled: u64,
    /// Settled as money given back.
    pub completed: u64,
    /// Settled as not given back (rejected, failed, refused).
    pub failed: u64,
    /// Still open (Square's PENDING, or no decisive answer yet).
    pub pending: u64,
}

/// Where one refund ended up after a try.
enum Step {
    Settled(RefundStatus),
    Open,
}

impl Engine {
    /// Sends or looks up the pending refunds nobody is working on (with `only`, that one
    /// refund), settling what Square settled.
    ///
    /// # Errors
    /// [`BillingError`]: the database, or a refused access token.
    pub async fn drive_refunds(&self, only: Option<RefundId>) -> Result<RefundSummary> {
        let mut summary = RefundSummary::default();
        loop {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            let batch = refunds::claim(
                &mut conn,
                self.clock.now(),
                self.owner,
                self.lease_until(),
                32,
                only,
            )
            .await?;
            drop(conn);
            if batch.is_empty() {
                return Ok(summary);
            }
            for refund in batch {
                summary.handled += 1;
                match self.drive_refund(&refund).await? {
                    Step::Settled(RefundStatus::Completed) => summary.completed += 1,
                    Step::Settled(_) => summary.failed += 1,
                    Step::Open => summary.pending += 1,
                }
            }
            if only.is_some() || self.cancel.is_cancelled() {
                return Ok(summary);
            }
        }
    }

    async fn drive_refund(&self, r: &RefundRow) -> Result<Step> {
        if let Some(square_id) = r.provider_refund_id.as_deref() {
            // Square has it: look, never re-send.
            return match self.gateway.get_refund(square_id).await? {
                Some(found) => self.take_answer(r, found).await,
                None => self.keep_open(r, None, "Square does not list it yet").await,
            };
        }
        let stale = chrono::Duration::from_std(self.config.stale_lookup_after)
            .unwrap_or(chrono::Duration::hours(24));
        if r.sends > 0
            && self.clock.now() - r.created_at > stale
            && let Some(found) = self.look_up(r).await?
        {
            return self.take_answer(r, found).await;
        }
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        refunds::count_send(&mut conn, r.id, self.owner).await?;
        drop(conn);
        let sent = PreparedRefund {
            key: r.idempotency_key.clone(),
            body: r.request_body.clone(),
        };
        match self.gateway.refund_payment(&sent).await {
            RefundOutcome::Accepted(found) => self.take_answer(r, found).await,
            RefundOutcome::Refused {
                code,
                category,
                detail,
            } => {
                tracing::warn!(refund_id = %r.id, charge_id = %r.charge_id, %code, %category, %detail,
                    "refund refused by Square: no money went back");
                self.settle(r, RefundStatus::Failed, None, Some(&code))
                    .await
            }
            RefundOutcome::Undecided { reason } => self.keep_open(r, None, &reason).await,
            RefundOutcome::Fatal { code } => {
                tracing::error!(refund_id = %r.id, %code, "Square rejected the access token; refund left pending");
                Err(BillingError::Unauthorized { code })
            }
        }
    }

    /// Square's refund for `r`: checked against what was asked, then settled or kept open.
    async fn take_answer(&self, r: &RefundRow, found: ProviderRefund) -> Result<Step> {
        if found.payment_id.as_deref() != Some(r.provider_payment_id.as_str())
            || found.amount_minor != r.amount_minor
            || found.currency != r.currency
        {
            tracing::error!(refund_id = %r.id, provider_refund_id = %found.id,
                payment = ?found.payment_id, amount_minor = found.amount_minor, currency = %found.currency,
                "Square's refund does not match the one asked for; left pending for an operator");
            return self.keep_open(r, None, "answer does not match").await;
        }
        match RefundStatus::from_square(&found.status) {
            Some(status) if status.is_final() => {
                self.settle(r, status, Some(&found.id), None).await
            }
            _ => self.keep_open(r, Some(&found.id), &found.status).await,
        }
    }

    async fn settle(
        &self,
        r: &RefundRow,
        status: RefundStatus,
        provider_refund_id: Option<&str>,
        failure_code: Option<&str>,
    ) -> Result<Step> {
        let mut tx = crate::store::begin(&self.pool).await?;
        let done = refunds::settle(
            &mut tx,
            r.id,
            status,
            provider_refund_id,
            failure_code,
            self.clock.now(),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        if done {
            tracing::info!(refund_id = %r.id, charge_id = %r.charge_id, subscription_id = %r.subscription_id,
                customer_id = %r.customer_id, amount_minor = r.amount_minor, currency = %r.currency,
                outcome = %status, provider_refund_id = provider_refund_id.unwrap_or(""),
                code = failure_code.unwrap_or(""), "refund");
            metrics::counter!(crate::ops::metrics::REFUNDS, "outcome" => status.as_str())
                .increment(1);
        }
        Ok(Step::Settled(status))
    }

    async fn keep_open(
        &self,
        r: &RefundRow,
        provider_refund_id: Option<&str>,
        why: &str,
    ) -> Result<Step> {
        let until: DateTime<Utc> =
            self.clock.now() + super::resend_backoff(r.sends, self.config.lease);
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        refunds::defer(&mut conn, r.id, provider_refund_id, until).await?;
        tracing::info!(refund_id = %r.id, charge_id = %r.charge_id, outcome = "pending",
            provider_refund_id = provider_refund_id.or(r.provider_refund_id.as_deref()).unwrap_or(""),
            reason = why, next_look_at = %until.to_rfc3339(), "refund still open");
        Ok(Step::Open)
    }

    /// A refund of the same payment and amount that Square made after `r` was written and
    /// that no other refund here claims: `r`'s, whose answer was lost.
    async fn look_up(&self, r: &RefundRow) -> Result<Option<ProviderRefund>> {
        let begin = r.created_at - chrono::Duration::minutes(5);
        let end = self.clock.now() + chrono::Duration::minutes(5);
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .gateway
                .list_refunds(begin, end, cursor.as_deref())
                .await?;
            for found in page.items {
                if found.payment_id.as_deref() != Some(r.provider_payment_id.as_str())
                    || found.amount_minor != r.amount_minor
                {
                    continue;
                }
                let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
                if refunds::by_provider_id(&mut conn, &found.id)
                    .await?
                    .is_none()
                {
                    tracing::info!(refund_id = %r.id, provider_refund_id = %found.id, "stale refund found at Square");
                    return Ok(Some(found));
                }
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }

    /// Settles a refund of paycron's that Square settled (reconcile's repair), through the
    /// normal checks; true when it was settled now.
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn repair_refund(&self, refund: &RefundRow, found: ProviderRefund) -> Result<bool> {
        Ok(matches!(
            self.take_answer(refund, found).await?,
            Step::Settled(_)
        ))
    }

    /// Records a refund Square made of a paycron payment that paycron does not hold (made in
    /// Square's dashboard, say): written under the database's cap and settled as completed in
    /// one transaction, with its ledger entry and event. False when the cap refuses it (it
    /// stays a finding for an operator).
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn record_found_refund(
        &self,
        charge: crate::domain::ChargeId,
        found: &ProviderRefund,
    ) -> Result<bool> {
        let mut tx = crate::store::begin(&self.pool).await?;
        let new = refunds::NewRefund {
            charge_id: Some(charge),
            amount_minor: Some(found.amount_minor),
            reason: Some("made at Square outside paycron; recorded by reconcile".into()),
            cancel: None,
        };
        let id = match refunds::create(&mut tx, charge, &new).await {
            Ok(id) => id,
            Err(StoreError::Rejected(why)) => {
                tracing::warn!(charge_id = %charge, provider_refund_id = %found.id, %why,
                    "refund made at Square cannot be recorded against its charge");
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        refunds::settle(
            &mut tx,
            id,
            RefundStatus::Completed,
            Some(&found.id),
            None,
            self.clock.now(),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(refund_id = %id, charge_id = %charge, provider_refund_id = %found.id,
            "reconcile: recorded a refund made at Square");
        Ok(true)
    }
}
