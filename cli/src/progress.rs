//! What is shown while waiting for a lock.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use portalocker::Lock;

use crate::exit::say;

/// Runs `acquire`, drawing a spinner with the elapsed time and the holder
/// on a terminal (stderr and stdout both terminals; redrawn in place and
/// cut to the terminal's width), and with `verbose` saying who holds it
/// when the first attempt finds it busy.
pub(crate) async fn waiting<T, F, H, HF>(what: &str, verbose: bool, acquire: F, holder: H) -> T
where
    F: Future<Output = T>,
    H: Fn() -> HF,
    HF: Future<Output = Option<String>>,
{
    let tty = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
    let mut acquire = std::pin::pin!(acquire);
    // A first look without waiting: most locks are free.
    let first = tokio::time::timeout(Duration::from_millis(100), acquire.as_mut()).await;
    if let Ok(v) = first {
        return v;
    }
    let mut who = holder().await;
    if verbose {
        match &who {
            Some(h) => say(format!("waiting for {what}, held by {h}")),
            None => say(format!("waiting for {what}")),
        }
    }
    let bar = if tty {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    // The elapsed time first, so that cutting the line to the terminal's
    // width never hides it.
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {wide_msg}") {
        bar.set_style(style);
    }
    // The holder before the path: what is cut to fit is the path, which
    // the user typed.
    let message = |who: &Option<String>| match who {
        Some(h) => format!("waiting: held by {h}: {what}"),
        None => format!("waiting for {what}"),
    };
    let start = Instant::now();
    bar.set_prefix(human_whole(Duration::ZERO));
    bar.set_message(message(&who));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0usize;
    loop {
        tokio::select! {
            v = acquire.as_mut() => {
                bar.finish_and_clear();
                return v;
            }
            _ = tick.tick() => {
                n += 1;
                if n.is_multiple_of(10) {
                    who = holder().await;
                    bar.set_message(message(&who));
                }
                bar.set_prefix(human_whole(start.elapsed()));
                bar.tick();
            }
        }
    }
}

/// Elapsed time for the spinner: whole seconds, so the line does not
/// flicker (`0 s`, `42 s`, `3 min 5 s`).
fn human_whole(d: Duration) -> String {
    human(Duration::from_secs(d.as_secs()))
}

pub(crate) async fn file_holder(path: &std::path::Path) -> Option<String> {
    let holders = Lock::new(path).holders().await;
    let first = holders.first()?;
    Some(match holders.len() {
        1 => first.to_string(),
        n => format!("{first} and {} more", n - 1),
    })
}

/// A duration as a person reads it: two significant figures at most, in
/// the largest unit that fits (`435 µs`, `2.5 ms`, `1.2 s`, `42 s`,
/// `3 min 5 s`, `2 h 10 min`).
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let short = |v: f64, unit: &str| {
        if v < 9.95 {
            format!("{v:.1} {unit}").replace(".0 ", " ")
        } else {
            format!("{v:.0} {unit}")
        }
    };
    let pair = |a: u64, ua: &str, b: u64, ub: &str| match b {
        0 => format!("{a} {ua}"),
        _ => format!("{a} {ua} {b} {ub}"),
    };
    if d.is_zero() {
        "0 s".into()
    } else if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros().max(1))
    } else if d < Duration::from_secs(1) {
        short(d.as_secs_f64() * 1e3, "ms")
    } else if secs < 60 {
        short(d.as_secs_f64(), "s")
    } else if secs < 3_600 {
        pair(secs / 60, "min", secs % 60, "s")
    } else {
        pair(secs / 3_600, "h", secs % 3_600 / 60, "min")
    }
}

#[cfg(test)]
mod tests {
    use super::human;
    use std::time::Duration as D;

    #[test]
    fn durations_are_rounded() {
        for (d, want) in [
            (D::ZERO, "0 s"),
            (D::from_nanos(435_066), "435 µs"),
            (D::from_micros(2_500), "2.5 ms"),
            (D::from_micros(12_345), "12 ms"),
            (D::from_millis(1_234), "1.2 s"),
            (D::from_secs(42), "42 s"),
            (D::from_secs(185), "3 min 5 s"),
            (D::from_secs(7_800), "2 h 10 min"),
        ] {
            assert_eq!(human(d), want, "{d:?}");
        }
    }
}
