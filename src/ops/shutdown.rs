//! Shutdown, injected: the binary turns signals into these two tokens (the first SIGTERM or
//! SIGINT drains, a second one aborts); the library only watches them, so it never waits on OS
//! signals or exits the process itself, and tests drive a shutdown by cancelling a token.

use tokio_util::sync::CancellationToken;

/// What a long-running command watches.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stop claiming and sending; finish and record what is in flight.
    pub drain: CancellationToken,
    /// Stop now (leases let another worker finish what was in flight).
    pub abort: CancellationToken,
}

impl Shutdown {
    /// Tokens nobody cancels yet.
    pub fn new() -> Self {
        Self::default()
    }
}
