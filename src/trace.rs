//! Diagnostics. The crate's few warnings and debug notes go through
//! [`diag!`]: `tracing` events with the `tracing` feature (which reach a
//! `log` logger too while no `tracing` subscriber is installed), `log`
//! records without it. Structured spans and events (feature `tracing` only) are
//! written at their sites under `#[cfg(feature = "tracing")]`, so that
//! without the feature nothing of them is compiled — not even a clock read.

/// `diag!(warn, "…{x}…")`: a `tracing` event (feature `tracing`) or a
/// `log` record of that level.
macro_rules! diag {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            tracing::$level!($($arg)+);
        }
        #[cfg(not(feature = "tracing"))]
        {
            log::$level!($($arg)+);
        }
    }};
}
