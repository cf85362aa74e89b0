//! What this worker holds: the leases of the charges it is working on (one map, one owner of
//! the bookkeeping), its liveness lock (checked and taken again after a lost connection), and
//! the halt breaker fed by Square's answers.

use super::*;

impl Engine {
    pub(super) fn leased(&self) -> std::sync::MutexGuard<'_, HashMap<ChargeId, Lease>> {
        // A panic elsewhere cannot leave a set of ids inconsistent in a way that matters.
        self.leased.lock().unwrap_or_else(|e| e.into_inner())
    }

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
