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

/// Runs an acquisition inside its `acquire` span and ends it with one
/// event: `granted` (what `granted` records about the guard) or `not
/// acquired` with the error. The distributed locks share it.
#[cfg(feature = "tracing")]
pub(crate) async fn acquire_in_span<G>(
    span: tracing::Span,
    acquire: impl std::future::Future<Output = crate::Result<G>>,
    granted: impl FnOnce(&G),
) -> crate::Result<G> {
    let traced = async move {
        let r = acquire.await;
        match &r {
            Ok(g) => granted(g),
            Err(e) => tracing::debug!(error = %e, "not acquired"),
        }
        r
    };
    tracing::Instrument::instrument(traced, span).await
}
