//! `paycron demo`: placeholder.
use crate::commands::Result;
use crate::config::Config;
/// Runs the demo.
///
/// # Errors
/// Never yet.
pub async fn run(_config: Config, _customers: usize, _months: u32) -> Result<()> {
    Ok(())
}
