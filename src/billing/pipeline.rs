//! A billing pass: batches are claimed while earlier ones are in flight, sent to Square at
//! most `concurrency` at a time (one at a time until the configuration is proven), and
//! recorded in batches as the answers arrive; the heartbeat keeps the leases of everything
//! being worked on. Charges never sent are withdrawn when a pass stops early.

use super::*;

impl Engine {
    /// Bills everything due as of `now`: batches until nothing is due, then re-drives this
    /// worker's own charges left open by an unknown outcome, once.
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn bill_due(&self, now: DateTime<Utc>) -> Result<Summary> {
        with_run_id(self.bill_due_pass(now)).await
    }

    /// [`Engine::bill_due`] as a task of the runtime's own: the one-shot commands would
    /// otherwise poll the whole pipeline on the thread that blocks on them, so every answer
    /// from Square or Postgres woke it from a worker (a futex and a context switch each).
    /// Dropping the returned future aborts the task, as dropping `bill_due` would.
    ///
    /// # Errors
    /// [`BillingError`]; a panic in the task resumes here.
    pub async fn bill_due_on_workers(
        self: &std::sync::Arc<Self>,
        now: DateTime<Utc>,
    ) -> Result<Summary> {
        let engine = std::sync::Arc::clone(self);
        let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            engine.bill_due(now).await
        }));
        match task.await {
            Ok(summary) => summary,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime shutting down cancels it; the process is ending.
            Err(e) => Err(BillingError::Stopped(e.to_string())),
        }
    }

    async fn bill_due_pass(&self, now: DateTime<Utc>) -> Result<Summary> {
        let mut total = Summary::default();
        if self.breaker().still_halted(self.clock.now()) {
            tracing::debug!("billing halted; waiting for the next probe");
            return Ok(total);
        }
        let started = {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            let started = subscriptions::db_now(&mut conn).await?;
            let warned = crate::store::cards::emit_expiring(
                &mut conn,
                now,
                self.config.card_expiry_lead_days,
            )
            .await?;
            if warned > 0 {
                tracing::info!(cards = warned, "card_expiring events emitted");
            }
            started
        };
        // A pass ends when a claim finds nothing, which may be because the due subscriptions
        // left had a charge of this pass still open (a catch-up's next period): passes repeat
        // until one claims nothing, starting each with nothing of ours in flight.
        let mut progress = Progress::new(&self.config, started);
        loop {
            let (pass, claimed) = self.bill_pass(now, &mut progress).await?;
            total.merge(&pass);
            if !claimed {
                break;
            }
        }
        if total.unresolved > 0 {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            let open = charges::owned_pending(&mut conn, self.owner).await?;
            drop(conn);
            let again = self.recover_charges(open, now).await?;
            total.unresolved = total
                .unresolved
                .saturating_sub(again.succeeded + again.declined + again.failed + again.fenced);
            let unresolved_before = total.unresolved;
            total.merge(&Summary {
                unresolved: 0,
                ..again
            });
            total.unresolved = unresolved_before;
        }
        if let Some(h) = self.breaker().halted() {
            return Err(BillingError::Halted(h.clone()));
        }
        Ok(total)
    }

    /// One pass of billing: claims batch after batch until a claim finds nothing, while the
    /// charges of earlier batches are sent and recorded. The next claim runs while a batch is
    /// in flight, so Square is never left idle waiting for the database; at most one claimed
    /// batch waits in the queue (the heartbeat keeps its leases). Returns the summary and
    /// whether anything was claimed.
    pub(super) async fn bill_pass(
        &self,
        now: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<(Summary, bool)> {
        let (queue, mut queued) = tokio::sync::mpsc::channel::<Vec<Queued>>(1);
        let pass = self
            .passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let produce = async move {
            let mut summary = Summary::default();
            let mut claimed = false;
            while let Some(batch) = self.claim_batch(now, progress).await? {
                claimed = true;
                summary.merge(&batch.summary);
                self.leased
                    .hold(batch.charges.iter().map(|q| q.charge.id), pass);
                if queue.send(batch.charges).await.is_err() {
                    // Sending stopped on an error; this batch is withdrawn below.
                    break;
                }
            }
            Ok::<_, BillingError>((summary, claimed))
        };
        let consume = async {
            let charges = futures::stream::unfold(&mut queued, |queued| async move {
                queued
                    .recv()
                    .await
                    .map(|batch| (futures::stream::iter(batch), queued))
            })
            .flatten()
            // Boxed: the compiler cannot otherwise see the borrowing stream is `Send` for the
            // daemon's spawned task.
            .boxed();
            let driven = self.drive(charges, now).await;
            // Stopped early on an error: refuse what the claimer has yet to hand over.
            queued.close();
            driven
        };
        let (produced, driven) = futures::join!(produce, consume);
        // After an error, charges claimed but never handed to Square (queued, or behind the
        // failure) are withdrawn: their subscriptions stay due. Whatever else is still pending
        // is left to recovery.
        let unsent = self.leased.end_pass(pass);
        let withdrawn = if unsent.is_empty() {
            Ok(0)
        } else {
            self.withdraw_unsent(&unsent).await
        };
        let driven = driven?;
        let (mut summary, claimed) = produced?;
        summary.merge(&driven);
        summary.withdrawn += withdrawn?;
        Ok((summary, claimed))
    }

    /// Sends charges (each its stored body under its key), at most `concurrency` in flight,
    /// and records the outcomes in batches as they arrive.
    pub(super) async fn drive_all(
        &self,
        charges: Vec<ChargeRow>,
        now: DateTime<Utc>,
    ) -> Result<Summary> {
        let ids: Vec<ChargeId> = charges.iter().map(|c| c.id).collect();
        self.leased.hold(ids.iter().copied(), 0);
        let queued = charges.into_iter().map(|charge| Queued {
            charge,
            problem: None,
        });
        let driven = self.drive(futures::stream::iter(queued), now).await;
        self.leased.release(&ids);
        driven
    }

    /// As [`Engine::drive_all`], over a stream of charges. A charge whose card failed the
    /// pre-check (disabled, forgotten or expired) is not sent: its attempt is recorded as
    /// declined with the card's own reason, and dunning treats it as a hard decline (fallback
    /// card or final state).
    ///
    /// Long on purpose: the claim-while-sending loop; its channels, tasks and the stop condition belong together.
    pub(super) async fn drive(
        &self,
        charges: impl futures::Stream<Item = Queued> + Send,
        now: DateTime<Utc>,
    ) -> Result<Summary> {
        let mut summary = Summary::default();
        let outcomes = charges
            .map(|queued| {
                let gateway = self.gateway.clone();
                let cancel = self.cancel.clone();
                async move {
                    let Queued { charge, problem } = queued;
                    if let Some(code) = problem {
                        return Attempted {
                            charge,
                            outcome: Some(PaymentOutcome::Declined {
                                code,
                                category: CARD_CHECK_CATEGORY.to_owned(),
                                hard: true,
                            }),
                            duration_ms: 0,
                            note: None,
                        };
                    }
                    // Until Square has proven the configuration, one charge at a time.
                    let _probe = if self.breaker().proven() {
                        None
                    } else {
                        let permit = self.probe.clone().acquire_owned().await.ok();
                        // Proven while this charge waited its turn: it goes at once, and so,
                        // one after another as the permit passes on, do the others that were
                        // queued behind the probe (held, the permit would make every charge
                        // queued before the proof wait for the one ahead of it).
                        if self.breaker().proven() {
                            None
                        } else {
                            permit
                        }
                    };
                    if cancel.is_cancelled()
                        || self.breaker().halted().is_some()
                        || !self.alive.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        return Attempted {
                            charge,
                            outcome: None,
                            duration_ms: 0,
                            note: None,
                        };
                    }
                    // From here on the charge may reach Square: it is never withdrawn.
                    self.leased.mark_sent(charge.id);
                    metrics::gauge!(crate::ops::metrics::IN_FLIGHT).increment(1.0);
                    let prepared = PreparedPayment {
                        key: charge.idempotency_key.clone(),
                        body: charge.request_body.clone(),
                    };
                    // A task of its own: the call progresses while earlier outcomes are recorded.
                    // Its latency is the provider's, from the request leaving: the wait for
                    // the rate limiter's turn is measured apart.
                    let (outcome, elapsed) = tokio::spawn(async move {
                        gateway.wait_turn().await;
                        let started = Instant::now();
                        let outcome = gateway.create_payment(&prepared).await;
                        (outcome, started.elapsed())
                    })
                    .await
                    .unwrap_or_else(|e| {
                        (
                            PaymentOutcome::Unknown {
                                reason: format!("payment task failed: {e}"),
                            },
                            std::time::Duration::ZERO,
                        )
                    });
                    metrics::gauge!(crate::ops::metrics::IN_FLIGHT).decrement(1.0);
                    self.heed(&outcome);
                    Attempted {
                        charge,
                        outcome: Some(outcome),
                        duration_ms: elapsed.as_millis() as u64,
                        note: None,
                    }
                }
            })
            .buffer_unordered(self.config.concurrency);
        // The answers go to the recorder through a channel, so calls keep starting while a
        // batch is being recorded: pulled straight from the recorder, the calls would wait for
        // its transactions, and at a high latency fewer than `concurrency` would be in flight.
        let (answered, answers) = tokio::sync::mpsc::channel::<Attempted>(RECORD_BACKLOG);
        let send = async move {
            let mut outcomes = std::pin::pin!(outcomes);
            while let Some(attempted) = outcomes.next().await {
                if answered.send(attempted).await.is_err() {
                    break;
                }
            }
            Ok::<_, BillingError>(())
        };
        // Answers are recorded in batches: what arrives within RECORD_WINDOW of the first
        // (at most RECORD_BATCH) shares one transaction, so a fast provider does not cost a
        // commit per handful of charges.
        let recorded = tokio_stream::StreamExt::chunks_timeout(
            tokio_stream::wrappers::ReceiverStream::new(answers),
            RECORD_BATCH,
            RECORD_WINDOW,
        )
        .map(|chunk| async move {
            let ids: Vec<ChargeId> = chunk.iter().map(|a| a.charge.id).collect();
            let recorded = self.record_batch(chunk, now).await;
            // Recorded, fenced, withdrawn or left open for recovery: no longer worked on.
            self.leased.release(&ids);
            recorded
        })
        // Batches touch disjoint charges and subscriptions (one open charge per subscription),
        // so recording a few at once cannot deadlock.
        .buffer_unordered(RECORD_PARALLEL);
        let record = async {
            let mut recorded = std::pin::pin!(recorded);
            while let Some(batch) = recorded.next().await {
                summary.merge(&batch?);
            }
            Ok::<_, BillingError>(())
        };
        // A recording error ends both at once: no call starts after it (what is in flight
        // stays pending, for recovery).
        tokio::select! {
            done = futures::future::try_join(send, record) => { done?; }
            () = self.heartbeat() => {}
        }
        Ok(summary)
    }

    /// Keeps this worker's leases on the charges it is working on (queued, in flight or being
    /// recorded) from running out while it works: every third of the lease, one statement
    /// extends them all. A charge left open by an unknown outcome leaves the set, so its lease
    /// runs out and recovery (ours or a peer's) can finish it. Never returns.
    pub(super) async fn heartbeat(&self) {
        let every = (self.config.lease / 3).max(std::time::Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            self.check_liveness().await;
            let ids = self.leased.ids();
            if ids.is_empty() {
                continue;
            }
            let renewed = match self.pool.acquire().await {
                Ok(mut conn) => {
                    charges::extend_leases(&mut conn, self.owner, &ids, self.lease_until()).await
                }
                Err(e) => Err(StoreError::from(e)),
            };
            match renewed {
                Ok(n) => tracing::debug!(charges = n, "leases extended"),
                Err(e) => tracing::warn!(error = %e, "cannot extend leases"),
            }
        }
    }
}
