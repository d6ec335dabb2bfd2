//! Waiting for something to become true: the one polling loop of Agimo's
//! tests, with a limit an environment variable sets for slow machines.
//!
//! ```text
//!   check() ──not yet──► sleep (10 ms, growing to 50 ms) ──► check() ... ──past the limit──► panic
//!      └──done──► its value
//! ```

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// The environment variable that sets how long [`eventually`] waits, in
/// seconds.
pub const TIMEOUT_VAR: &str = "AGIMO_TEST_TIMEOUT_SECS";

/// How long [`eventually`] waits when `AGIMO_TEST_TIMEOUT_SECS` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`eventually`] waits: `AGIMO_TEST_TIMEOUT_SECS` seconds, else
/// [`DEFAULT_TIMEOUT`].
pub fn timeout() -> Duration {
    match std::env::var(TIMEOUT_VAR) {
        Ok(secs) => Duration::from_secs(
            secs.trim().parse().unwrap_or_else(|_| panic!("{TIMEOUT_VAR}={secs:?}: a whole number of seconds")),
        ),
        Err(_) => DEFAULT_TIMEOUT,
    }
}

/// What a check of [`eventually`] returns: whether it holds yet and, once it
/// does, a value.
pub trait Outcome {
    type Value;
    /// `Ok` once done; `Err` with what was seen instead, if the check says.
    fn done(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn done(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err` says what was seen instead; the last one is in the panic message.
impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;
    fn done(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Runs `check` until it holds (`true`, `Some`, `Ok`) and returns its value;
/// panics with `what` (and the last `Err`) after [`timeout()`].
pub async fn eventually<C: Outcome, F: Future<Output = C>>(what: &str, check: impl FnMut() -> F) -> C::Value {
    eventually_within(timeout(), what, check).await
}

/// [`eventually`] for what takes longer by nature than the usual limit (a
/// KEDA cooldown, a namespace's deletion): waits up to `limit`, or up to
/// [`timeout()`] if that is longer.
pub async fn eventually_within<C: Outcome, F: Future<Output = C>>(
    limit: Duration,
    what: &str,
    check: impl FnMut() -> F,
) -> C::Value {
    poll(limit.max(timeout()), what, check).await
}

async fn poll<C: Outcome, F: Future<Output = C>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> C::Value {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match check().await.done() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if started.elapsed() >= limit {
            match last {
                Some(last) => panic!("{what}: not within {limit:?} (set {TIMEOUT_VAR} to wait longer); last: {last}"),
                None => panic!("{what}: not within {limit:?} (set {TIMEOUT_VAR} to wait longer)"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_millis(50));
    }
}

/// The condition of `type_` in a list of Gateway API conditions (an object's
/// `status.conditions`, a route parent's `conditions`).
pub fn condition<'a>(conditions: &'a serde_json::Value, type_: &str) -> Option<&'a serde_json::Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_check_holds() {
        let mut calls = 0;
        let got = eventually("the third call", || {
            calls += 1;
            let n = calls;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "last: still 1")]
    async fn panics_with_the_last_thing_seen_after_the_limit() {
        poll(Duration::ZERO, "never", || async { Err::<(), _>("still 1") }).await;
    }

    #[test]
    fn finds_a_condition_by_type() {
        let conditions = serde_json::json!([{"type": "Accepted", "status": "True"}, {"type": "Programmed"}]);
        assert_eq!(condition(&conditions, "Accepted").unwrap()["status"], "True");
        assert!(condition(&conditions, "ResolvedRefs").is_none());
    }
}
