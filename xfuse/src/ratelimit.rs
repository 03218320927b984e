//! Rate limits for log messages a peer can trigger at will.
//!
//! A guest that sends a malformed descriptor chain in a loop must not be
//! able to fill the host's log (or its disk, or the journal's rate limit,
//! which would then hide everything else). Each kind of message gets its
//! own [`LogLimit`]: at most `burst` messages per `interval`, and the first
//! message let through after a suppression says how many were dropped, so
//! the log still tells that a flood happened and how large it was.
//!
//! Time is passed in ([`LogLimit::admit_at`]) so the rule is tested without
//! a clock; [`LogLimit::admit`] reads the monotonic one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages of one kind let through per [`LOG_INTERVAL`] by the limits the
/// transports use.
pub const LOG_BURST: u32 = 10;
/// The window of [`LOG_BURST`].
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// At most `burst` messages per `interval` (a fixed window that starts at
/// the first message after the previous one ended).
#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// When the current window began; `None` before the first message.
    start: Option<Instant>,
    /// Messages let through in the current window.
    admitted: u32,
    /// Messages dropped since the last one let through.
    suppressed: u64,
}

impl LogLimit {
    /// A limit of `burst` messages per `interval` (a `burst` of 0 lets
    /// nothing through).
    pub fn new(burst: u32, interval: Duration) -> LogLimit {
        LogLimit {
            burst,
            interval,
            window: Mutex::new(Window::default()),
        }
    }

    /// [`LOG_BURST`] per [`LOG_INTERVAL`].
    pub fn standard() -> LogLimit {
        LogLimit::new(LOG_BURST, LOG_INTERVAL)
    }

    /// Whether to log a message now: `Some(n)` to log it, `n` being the
    /// messages suppressed since the last one logged (say so when `n > 0`);
    /// `None` to drop it.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`LogLimit::admit`] at time `now` (never earlier than a previous
    /// call's; an earlier one counts as the same instant).
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let expired = match w.start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.interval,
        };
        if expired {
            w.start = Some(now);
            w.admitted = 0;
        }
        if w.admitted < self.burst {
            w.admitted += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
            None
        }
    }

    /// Messages dropped since the last one let through (for a summary at
    /// the end of a session, when no further message may come to carry it).
    pub fn take_suppressed(&self) -> u64 {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut w.suppressed)
    }
}

/// Logs a warning through `limit` (a [`LogLimit`]): dropped past its rate,
/// and carrying a `suppressed` field with the count of dropped ones when
/// there were any. Takes `tracing::warn!`'s arguments.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        match $limit.admit() {
            Some(0) => ::tracing::warn!($($arg)+),
            Some(suppressed) => ::tracing::warn!(suppressed, $($arg)+),
            None => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rest_of_the_window_is_dropped_and_counted() {
        let limit = LogLimit::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..10)
            .map(|i| limit.admit_at(t0 + Duration::from_millis(i * 100)))
            .collect();
        assert_eq!(
            verdicts,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        // The next window: the first message carries the seven dropped.
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(5)), Some(7));
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(5)), Some(0));
        assert_eq!(limit.take_suppressed(), 0);
    }

    #[test]
    fn a_window_starts_at_the_first_message_after_a_quiet_time() {
        let limit = LogLimit::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(t0), Some(0));
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(4)), None);
        // Quiet for a minute: a new window from here, not from t0 + 5k.
        let t1 = t0 + Duration::from_secs(64);
        assert_eq!(limit.admit_at(t1), Some(1));
        assert_eq!(limit.admit_at(t1 + Duration::from_secs(4)), None);
        assert_eq!(limit.take_suppressed(), 1);
        assert_eq!(limit.take_suppressed(), 0);
    }

    #[test]
    fn a_flood_logs_a_bounded_number_of_lines() {
        // 100,000 messages over 50 s at 10 per 5 s: 10 windows of 10.
        let limit = LogLimit::standard();
        let t0 = Instant::now();
        let logged = (0..100_000u64)
            .filter(|i| limit.admit_at(t0 + Duration::from_micros(i * 500)).is_some())
            .count();
        assert_eq!(logged, 10 * LOG_BURST as usize);
    }

    #[test]
    fn a_clock_that_goes_back_does_not_reopen_the_window() {
        let limit = LogLimit::new(1, Duration::from_secs(5));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(limit.admit_at(t0), Some(0));
        assert_eq!(limit.admit_at(t0 - Duration::from_secs(3)), None);
    }

    #[test]
    fn nothing_passes_a_zero_burst() {
        let limit = LogLimit::new(0, Duration::from_secs(1));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.take_suppressed(), 1);
    }
}
