//! What this worker holds: the leases of the charges it is working on (one map, one owner of
//! the bookkeeping), its liveness lock (checked and taken again after a lost connection), and
//! the halt breaker fed by Square's answers.

use super::*;

/// The charges this worker is working on (claimed, queued, in flight or being recorded), whose
/// leases the heartbeat extends: the one owner of that bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Leases(std::sync::Mutex<HashMap<ChargeId, Lease>>);

impl Leases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChargeId, Lease>> {
        // A panic elsewhere cannot leave a set of ids inconsistent in a way that matters.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts working on `ids` for billing pass `pass` (0: re-driven), not yet sent.
    pub(super) fn hold(&self, ids: impl IntoIterator<Item = ChargeId>, pass: u64) {
        let lease = Lease { pass, sent: false };
        self.map().extend(ids.into_iter().map(|id| (id, lease)));
    }

    /// The charge may reach Square from now on: it is never withdrawn.
    pub(super) fn mark_sent(&self, id: ChargeId) {
        self.map()
            .entry(id)
            .or_insert(Lease {
                pass: 0,
                sent: true,
            })
            .sent = true;
    }

    /// Done with `ids` (recorded, fenced, withdrawn or left open for recovery).
    pub(super) fn release(&self, ids: &[ChargeId]) {
        let mut map = self.map();
        for id in ids {
            map.remove(id);
        }
    }

    /// Ends pass `pass`: returns its charges never sent (to withdraw) and forgets all of its.
    pub(super) fn end_pass(&self, pass: u64) -> Vec<ChargeId> {
        let mut unsent = Vec::new();
        self.map().retain(|id, lease| {
            if lease.pass == pass && !lease.sent {
                unsent.push(*id);
            }
            lease.pass != pass
        });
        unsent
    }

    /// Every charge being worked on.
    pub(super) fn ids(&self) -> Vec<ChargeId> {
        self.map().keys().copied().collect()
    }
}

impl Engine {
    /// Whether this worker still holds its liveness lock. Its session is checked with a
    /// round trip; when the connection was lost (a database restart, a network blip) the lock
    /// is taken again on a new one. Until it is, nothing is claimed or sent: peers treat this
    /// worker as dead and may be taking its charges over.
    pub(super) async fn check_liveness(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let mut conn = self.liveness.lock().await;
        if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
            self.alive.store(true, SeqCst);
            return true;
        }
        if self.alive.swap(false, SeqCst) {
            tracing::warn!(owner = %self.owner, "liveness lock lost with its connection; nothing is sent until it is taken again");
        }
        let retaken = match self.pool.acquire().await {
            Ok(c) => {
                let mut c = c.detach();
                match charges::retake_owner_lock(&mut c, self.owner).await {
                    Ok(true) => Some(c),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        match retaken {
            Some(c) => {
                *conn = c;
                self.alive.store(true, SeqCst);
                tracing::info!(owner = %self.owner, "liveness lock taken again");
                true
            }
            None => false,
        }
    }

    pub(super) fn breaker(&self) -> std::sync::MutexGuard<'_, breaker::Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds Square's answer to the halt breaker, and says so when billing halts or resumes.
    pub(super) fn heed(&self, outcome: &PaymentOutcome) {
        let change = match outcome {
            PaymentOutcome::Succeeded { .. } | PaymentOutcome::Declined { .. } => {
                self.breaker().proved()
            }
            PaymentOutcome::Misconfigured {
                code,
                field,
                detail,
                ..
            } => self.breaker().refused(
                breaker::Halt {
                    code: code.clone(),
                    field: field.clone(),
                    detail: detail.clone(),
                    setting: crate::domain::decline::suspect_setting(code, field.as_deref()),
                },
                self.clock.now(),
            ),
            // A refused token is the configuration's fault too: no charge can succeed.
            PaymentOutcome::Fatal { code, detail, .. } => self.breaker().refused(
                breaker::Halt {
                    code: code.clone(),
                    field: None,
                    detail: detail.clone(),
                    setting: "SQUARE_ACCESS_TOKEN",
                },
                self.clock.now(),
            ),
            _ => breaker::Change::None,
        };
        match change {
            breaker::Change::None => {}
            breaker::Change::Halted(h, backoff) => {
                metrics::gauge!(crate::ops::metrics::BILLING_HALTED).set(1.0);
                tracing::error!(
                    code = %h.code, field = h.field.as_deref().unwrap_or(""), setting = h.setting,
                    detail = %h.detail, probe_in_s = backoff.as_secs(),
                    "billing halted: Square refused the charges for a configuration reason; check {}",
                    h.setting
                );
            }
            breaker::Change::Resumed => {
                metrics::gauge!(crate::ops::metrics::BILLING_HALTED).set(0.0);
                tracing::info!("billing resumed: Square accepted the configuration again");
            }
        }
    }
}
