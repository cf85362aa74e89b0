//! Operations: logging set-up (text for people, JSON lines for collectors).

pub mod logging;
