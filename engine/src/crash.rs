//! Crash points for the crash-matrix tests: with `BOXOFFICE_CRASH_AT=NAME` (or `NAME:N`), a debug build aborts
//! the whole process, with no cleanup and nothing flushed, as `kill -9` would, the first (or `N`th) time it
//! reaches the point `NAME`. The points sit between two steps of an order's payment (`desk::payment`) and of the
//! payment provider's calls. A release build has none: [`point`] is empty there.

/// The environment variable naming the crash point.
pub const CRASH_AT_ENV: &str = "BOXOFFICE_CRASH_AT";

/// Aborts the process if `name` is the crash point `BOXOFFICE_CRASH_AT` names, on its `N`th hit.
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let value = std::env::var(CRASH_AT_ENV).ok()?;
        Some(match value.split_once(':') {
            Some((point, nth)) => (point.to_owned(), nth.parse().unwrap_or(1)),
            None => (value, 1),
        })
    });
    if let Some((point, nth)) = target
        && point == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth
    {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
