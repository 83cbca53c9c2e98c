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

/// Defines `acquire_with(&self, w: WaitOptions) -> Result<$guard>` for a
/// distributed lock: `self.$untraced(w)`, inside (feature `tracing`) an
/// `acquire` span with the `span` fields then `timeout` and
/// `fail_when_locked`, ending in [`acquire_in_span`]'s events; `granted`
/// records the holder id, the `granted` fields and the wait. (`self` and
/// `w` are passed in: a macro cannot name the caller's `self`.)
macro_rules! traced_acquire_with {
    (
        $vis:vis fn($self:ident, $w:ident) -> $guard:ty = $untraced:ident,
        span: [$($span:tt)*],
        granted: |$g:ident| [$($granted:tt)*] $(,)?
    ) => {
        $vis async fn acquire_with(
            &$self,
            $w: $crate::options::WaitOptions,
        ) -> $crate::Result<$guard> {
            #[cfg(feature = "tracing")]
            return $crate::trace::acquire_in_span(
                ::tracing::debug_span!(
                    "acquire",
                    $($span)*
                    timeout = ?$w.timeout,
                    fail_when_locked = $w.fail_when_locked,
                ),
                $self.$untraced($w),
                |$g| {
                    ::tracing::debug!(
                        holder_id = $g.holder_id(),
                        $($granted)*
                        waited = ?$g.waited(),
                        "granted"
                    );
                },
            )
            .await;
            #[cfg(not(feature = "tracing"))]
            $self.$untraced($w).await
        }
    };
}
pub(crate) use traced_acquire_with;
