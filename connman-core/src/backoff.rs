//! Backoff policies: pure, clock-free sources of delays.
//!
//! A [`Backoff`] hands out the delay to wait before the next connect attempt, or `None` when it is time to give up.
//! It never sleeps and never reads a clock: the caller (a lifecycle driver) does that. This keeps every schedule
//! testable to the instant.
//!
//! Three policies:
//!
//! * [`Exponential`]: `initial · factor^n`, clamped at `max`, with optional [`Jitter`], a limit on attempts and a limit
//!   on the sum of delays handed out.
//! * [`Constant`]: the same delay every time (upnode's fixed 1 s).
//! * [`Steps`]: a table of delays, then a flat delay (Phoenix's `reconnectAfterMs`).
//!
//! The presets in [`presets`] reproduce the schedules of well-known systems.
//!
//! ```
//! use connman_core::backoff::{Backoff, Exponential, Jitter};
//! use std::time::Duration;
//!
//! let mut backoff = Exponential::builder()
//!     .initial(Duration::from_millis(100))
//!     .factor(2.0)
//!     .max(Duration::from_secs(1))
//!     .jitter(Jitter::None)
//!     .max_attempts(5)
//!     .build()?;
//! let delays: Vec<_> = std::iter::from_fn(|| backoff.next_delay()).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
//! backoff.reset();
//! assert_eq!(backoff.next_delay(), Some(Duration::from_millis(100)));
//! # Ok::<(), connman_core::error::InvalidConfig>(())
//! ```

use std::fmt;
use std::time::Duration;

use crate::error::InvalidConfig;

/// A source of delays between connect attempts.
///
/// `next_delay` is called once per failed attempt (or lost link) and returns how long to wait before the next attempt;
/// `None` means give up. `reset` is called after a connection proved good.
pub trait Backoff {
    /// The delay before the next attempt, or `None` to give up.
    fn next_delay(&mut self) -> Option<Duration>;

    /// Starts the schedule over, as after a good connection.
    fn reset(&mut self);
}

impl<B: Backoff + ?Sized> Backoff for Box<B> {
    fn next_delay(&mut self) -> Option<Duration> {
        (**self).next_delay()
    }

    fn reset(&mut self) {
        (**self).reset()
    }
}

/// How randomness is mixed into an exponential delay.
///
/// With `nominal = min(initial · factor^n, max)`:
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// The nominal delay itself.
    None,
    /// Uniform in `[0, nominal]` (AWS "full jitter").
    Full,
    /// Uniform in `[nominal/2, nominal]` (AWS "equal jitter").
    Equal,
    /// Uniform in `[initial, previous · 3]`, clamped at `max` (AWS "decorrelated jitter"); `factor` is not used.
    Decorrelated,
    /// `nominal · (1 ± f)`, uniform, then clamped at `max` (gRPC uses 0.2).
    ///
    /// By default the spread is taken around the clamped nominal, as gRPC does. With
    /// [`ExponentialBuilder::jitter_unclamped`] it is taken around the unclamped nominal, as socket.io's `backo2` does.
    Proportional(f64),
}

/// Exponential backoff: `initial · factor^n`, clamped at `max`.
///
/// Build it with [`Exponential::builder`]. `max` is a true clamp: no delay it hands out is ever above it, whatever the
/// jitter. The limit on elapsed time counts the delays handed out since the last reset, not wall time (the policy has no
/// clock); the lifecycle adds connect time on top.
#[derive(Clone)]
pub struct Exponential {
    config: ExponentialBuilder,
    attempt: u32,
    elapsed: Duration,
    previous: Duration,
    rng: fastrand::Rng,
}

/// Settings of an [`Exponential`] backoff.
#[derive(Debug, Clone)]
#[must_use]
pub struct ExponentialBuilder {
    initial: Duration,
    factor: f64,
    max: Duration,
    jitter: Jitter,
    jitter_unclamped: bool,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
    seed: Option<u64>,
}

impl Default for ExponentialBuilder {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(30),
            jitter: Jitter::None,
            jitter_unclamped: false,
            max_attempts: None,
            max_elapsed: None,
            seed: None,
        }
    }
}

impl ExponentialBuilder {
    /// The first delay (default 100 ms).
    pub const fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// The growth factor, at least 1 (default 2).
    pub const fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// The largest delay ever handed out, at least `initial` (default 30 s).
    pub const fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The jitter mode (default none).
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Takes [`Jitter::Proportional`] around the unclamped nominal delay, as socket.io does.
    pub const fn jitter_unclamped(mut self) -> Self {
        self.jitter_unclamped = true;
        self
    }

    /// Gives up after this many delays, at least 1 (default: never).
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Gives up once the delays handed out since the last reset would pass this sum (default: never).
    pub const fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// Seeds the random source so that a jittered schedule is reproducible.
    pub const fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the settings and builds the policy.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] for a zero `initial`, a factor below 1 or not finite, `max` below `initial`, a jitter factor
    /// outside `[0, 1]`, zero `max_attempts` or zero `max_elapsed`.
    pub fn build(self) -> Result<Exponential, InvalidConfig> {
        if self.initial.is_zero() {
            return Err(InvalidConfig::new("initial delay must be above zero"));
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(InvalidConfig::new("factor must be finite and at least 1"));
        }
        if self.max < self.initial {
            return Err(InvalidConfig::new(
                "max delay must be at least the initial delay",
            ));
        }
        if let Jitter::Proportional(f) = self.jitter
            && !(0.0..=1.0).contains(&f)
        {
            return Err(InvalidConfig::new(
                "proportional jitter must be within 0 and 1",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(InvalidConfig::new("max attempts must be at least 1"));
        }
        if self.max_elapsed.is_some_and(|d| d.is_zero()) {
            return Err(InvalidConfig::new("max elapsed must be above zero"));
        }
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Ok(Exponential {
            previous: self.initial,
            config: self,
            attempt: 0,
            elapsed: Duration::ZERO,
            rng,
        })
    }
}

impl Exponential {
    /// Starts the settings of an exponential backoff.
    pub fn builder() -> ExponentialBuilder {
        ExponentialBuilder::default()
    }

    /// The settings this policy was built with.
    pub fn config(&self) -> &ExponentialBuilder {
        &self.config
    }

    /// The nominal delay of attempt `n` (from 0), before jitter and before the clamp, in seconds.
    fn nominal_secs(&self, n: u32) -> f64 {
        // `powi` saturates to infinity rather than overflowing; `min` below brings it back.
        let exponent = i32::try_from(n).unwrap_or(i32::MAX);
        self.config.initial.as_secs_f64() * self.config.factor.powi(exponent)
    }

    fn clamp(&self, secs: f64) -> Duration {
        if secs.is_nan() {
            return self.config.max;
        }
        // `max` as float seconds may round up past `Duration::MAX`: convert fallibly and clamp as a `Duration`.
        let max = self.config.max.as_secs_f64();
        Duration::try_from_secs_f64(secs.clamp(0.0, max))
            .map_or(self.config.max, |d| d.min(self.config.max))
    }
}

impl Backoff for Exponential {
    fn next_delay(&mut self) -> Option<Duration> {
        if self
            .config
            .max_attempts
            .is_some_and(|max| self.attempt >= max)
        {
            return None;
        }
        let n = self.attempt;
        let max = self.config.max.as_secs_f64();
        let nominal = self.nominal_secs(n).min(max);
        let r = self.rng.f64();
        let delay = match self.config.jitter {
            Jitter::None => self.clamp(nominal),
            Jitter::Full => self.clamp(nominal * r),
            Jitter::Equal => self.clamp(nominal / 2.0 + nominal / 2.0 * r),
            Jitter::Decorrelated => {
                let low = self.config.initial.as_secs_f64();
                let high = (self.previous.as_secs_f64() * 3.0).max(low);
                self.clamp(low + (high - low) * r)
            }
            Jitter::Proportional(f) => {
                let base = if self.config.jitter_unclamped {
                    self.nominal_secs(n)
                } else {
                    nominal
                };
                // Uniform in [-1, 1).
                let spread = r * 2.0 - 1.0;
                self.clamp(base * (1.0 + f * spread))
            }
        };
        if let Some(limit) = self.config.max_elapsed {
            let total = self.elapsed.saturating_add(delay);
            if total > limit {
                return None;
            }
            self.elapsed = total;
        }
        self.attempt = self.attempt.saturating_add(1);
        self.previous = delay;
        Some(delay)
    }

    fn reset(&mut self) {
        self.attempt = 0;
        self.elapsed = Duration::ZERO;
        self.previous = self.config.initial;
    }
}

impl fmt::Debug for Exponential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exponential")
            .field("config", &self.config)
            .field("attempt", &self.attempt)
            .field("elapsed", &self.elapsed)
            .finish_non_exhaustive()
    }
}

/// The same delay every time, optionally a limited number of times.
#[derive(Debug, Clone)]
pub struct Constant {
    delay: Duration,
    max_attempts: Option<u32>,
    attempt: u32,
}

impl Constant {
    /// Waits `delay` before every attempt, forever.
    pub const fn new(delay: Duration) -> Self {
        Self {
            delay,
            max_attempts: None,
            attempt: 0,
        }
    }

    /// Gives up after `attempts` delays.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] when `attempts` is zero.
    pub fn with_max_attempts(mut self, attempts: u32) -> Result<Self, InvalidConfig> {
        if attempts == 0 {
            return Err(InvalidConfig::new("max attempts must be at least 1"));
        }
        self.max_attempts = Some(attempts);
        Ok(self)
    }
}

impl Backoff for Constant {
    fn next_delay(&mut self) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| self.attempt >= max) {
            return None;
        }
        self.attempt = self.attempt.saturating_add(1);
        Some(self.delay)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A table of delays, then a flat delay forever.
#[derive(Debug, Clone)]
pub struct Steps {
    table: Vec<Duration>,
    then: Duration,
    next: usize,
}

impl Steps {
    /// Hands out the `table` in order, then its last entry forever.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] when the table is empty.
    pub fn new(table: impl Into<Vec<Duration>>) -> Result<Self, InvalidConfig> {
        let table = table.into();
        let then = *table
            .last()
            .ok_or_else(|| InvalidConfig::new("a step table needs at least one delay"))?;
        Ok(Self {
            table,
            then,
            next: 0,
        })
    }

    /// Hands out `then` once the table is used up, instead of its last entry.
    pub fn then(mut self, then: Duration) -> Self {
        self.then = then;
        self
    }
}

impl Backoff for Steps {
    fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.table.get(self.next).copied().unwrap_or(self.then);
        self.next = self.next.saturating_add(1).min(self.table.len());
        Some(delay)
    }

    fn reset(&mut self) {
        self.next = 0;
    }
}

/// Schedules of well-known systems, each reproducing the original's numbers.
pub mod presets {
    use super::{Constant, Exponential, Jitter, Steps};
    use std::time::Duration;

    fn build(builder: super::ExponentialBuilder) -> Exponential {
        match builder.build() {
            Ok(backoff) => backoff,
            // The preset settings are constants that pass validation; a failure here is a bug in this module.
            Err(e) => unreachable!("invalid preset: {e}"),
        }
    }

    /// connman's intent: 20 ms after the first failure (10 ms doubled), doubling, clamped at 128 s.
    ///
    /// Waits: 20, 40, 80, …, 81 920, 128 000, 128 000 … ms. No jitter, no limit, like the original; add them with
    /// [`Exponential::builder`] if you need them.
    pub fn connman() -> Exponential {
        build(
            Exponential::builder()
                .initial(Duration::from_millis(20))
                .factor(2.0)
                .max(Duration::from_secs(128)),
        )
    }

    /// connman 2.x exactly as it behaves: its 128 s "cap" only guards the doubling, so the wait reaches 163.84 s.
    ///
    /// Waits: 20, 40, 80, …, 81 920, 163 840, 163 840 … ms (14 failures to reach the top, about 164 s in all).
    pub fn connman_compat() -> Steps {
        let table: Vec<Duration> = (1..=14).map(|n| Duration::from_millis(10 << n)).collect();
        match Steps::new(table) {
            Ok(steps) => steps,
            Err(e) => unreachable!("invalid preset: {e}"),
        }
    }

    /// gRPC's connection backoff: 1 s, ×1.6, ±20 % jitter, at most 120 s.
    pub fn grpc() -> Exponential {
        grpc_builder()
            .build()
            .unwrap_or_else(|e| unreachable!("invalid preset: {e}"))
    }

    /// The settings of [`grpc`], to seed or adjust.
    pub fn grpc_builder() -> super::ExponentialBuilder {
        Exponential::builder()
            .initial(Duration::from_secs(1))
            .factor(1.6)
            .max(Duration::from_secs(120))
            .jitter(Jitter::Proportional(0.2))
    }

    /// socket.io's reconnection delay: 1 s, ×2, ±50 % around the unclamped delay, at most 5 s.
    pub fn socketio() -> Exponential {
        build(socketio_builder())
    }

    /// The settings of [`socketio`], to seed or adjust.
    pub fn socketio_builder() -> super::ExponentialBuilder {
        Exponential::builder()
            .initial(Duration::from_secs(1))
            .factor(2.0)
            .max(Duration::from_secs(5))
            .jitter(Jitter::Proportional(0.5))
            .jitter_unclamped()
    }

    /// Phoenix's `reconnectAfterMs`: 10, 50, 100, 150, 200, 250, 500, 1000, 2000 ms, then 5 s flat.
    pub fn phoenix() -> Steps {
        let table = [10, 50, 100, 150, 200, 250, 500, 1000, 2000].map(Duration::from_millis);
        match Steps::new(table) {
            Ok(steps) => steps.then(Duration::from_secs(5)),
            Err(e) => unreachable!("invalid preset: {e}"),
        }
    }

    /// upnode's fixed reconnect delay: 1 s, every time.
    pub const fn upnode() -> Constant {
        Constant::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(b: &mut impl Backoff, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| b.next_delay().map_or(u64::MAX, |d| d.as_millis() as u64))
            .collect()
    }

    #[test]
    fn cn_08_connman_compat_reaches_163_84_seconds() {
        let mut b = presets::connman_compat();
        assert_eq!(
            take(&mut b, 16),
            [
                20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920, 163840,
                163840, 163840
            ]
        );
        // The 14th failure waits 163.84 s, after about 164 s of waiting before it.
        let before: u64 = take(&mut presets::connman_compat(), 13).iter().sum();
        assert_eq!(before, 163_820);
    }

    #[test]
    fn cn_08_connman_preset_clamps_at_128_seconds() {
        let mut b = presets::connman();
        assert_eq!(
            take(&mut b, 15),
            [
                20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920, 128000,
                128000
            ]
        );
    }

    #[test]
    fn cn_09_success_resets_to_the_first_delay() {
        let mut b = presets::connman();
        take(&mut b, 5);
        b.reset();
        assert_eq!(take(&mut b, 2), [20, 40]);
        let mut c = presets::connman_compat();
        take(&mut c, 20);
        c.reset();
        assert_eq!(take(&mut c, 1), [20]);
    }

    #[test]
    fn grpc_nominal_schedule() {
        let mut b = presets::grpc_builder()
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let got: Vec<f64> = (0..13)
            .map(|_| b.next_delay().unwrap().as_secs_f64())
            .collect();
        let want = [
            1.0,
            1.6,
            2.56,
            4.096,
            6.5536,
            10.48576,
            16.777216,
            26.8435456,
            42.94967296,
            68.719476736,
            109.9511627776,
            120.0,
            120.0,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} != {w}");
        }
    }

    #[test]
    fn grpc_jitter_within_twenty_percent() {
        for seed in 0..200 {
            let mut b = presets::grpc_builder().seed(seed).build().unwrap();
            let mut nominal = presets::grpc_builder()
                .jitter(Jitter::None)
                .build()
                .unwrap();
            for _ in 0..15 {
                let d = b.next_delay().unwrap().as_secs_f64();
                let n = nominal.next_delay().unwrap().as_secs_f64();
                assert!(
                    d >= n * 0.8 - 1e-9 && d <= (n * 1.2).min(120.0) + 1e-9,
                    "{d} vs {n}"
                );
            }
        }
    }

    #[test]
    fn socketio_vector() {
        for seed in 0..500 {
            let mut b = presets::socketio_builder().seed(seed).build().unwrap();
            let d = take(&mut b, 6);
            assert!((500..=1500).contains(&d[0]), "{d:?}");
            assert!((1000..=3000).contains(&d[1]), "{d:?}");
            assert!((2000..=5000).contains(&d[2]), "{d:?}");
            for x in &d[3..] {
                assert!((4000..=5000).contains(x), "{d:?}");
            }
        }
    }

    #[test]
    fn phoenix_vector() {
        let mut b = presets::phoenix();
        assert_eq!(
            take(&mut b, 12),
            [
                10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000, 5000, 5000
            ]
        );
    }

    #[test]
    fn upnode_vector() {
        let mut b = presets::upnode();
        assert_eq!(take(&mut b, 4), [1000; 4]);
    }

    #[test]
    fn seeded_jitter_is_reproducible() {
        let a = take(&mut presets::grpc_builder().seed(7).build().unwrap(), 10);
        let b = take(&mut presets::grpc_builder().seed(7).build().unwrap(), 10);
        let c = take(&mut presets::grpc_builder().seed(8).build().unwrap(), 10);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn limits_give_up() {
        let mut b = Exponential::builder()
            .initial(Duration::from_millis(100))
            .max_elapsed(Duration::from_millis(700))
            .build()
            .unwrap();
        assert_eq!(take(&mut b, 4), [100, 200, 400, u64::MAX]);
        b.reset();
        assert_eq!(take(&mut b, 1), [100]);
        let mut c = Constant::new(Duration::from_secs(1))
            .with_max_attempts(2)
            .unwrap();
        assert_eq!(take(&mut c, 3), [1000, 1000, u64::MAX]);
    }

    #[test]
    fn invalid_settings_are_typed_errors() {
        let d = Duration::from_millis;
        assert!(Exponential::builder().factor(0.5).build().is_err());
        assert!(Exponential::builder().factor(f64::NAN).build().is_err());
        assert!(Exponential::builder().initial(d(0)).build().is_err());
        assert!(
            Exponential::builder()
                .initial(d(10))
                .max(d(5))
                .build()
                .is_err()
        );
        assert!(Exponential::builder().max_attempts(0).build().is_err());
        assert!(Exponential::builder().max_elapsed(d(0)).build().is_err());
        assert!(
            Exponential::builder()
                .jitter(Jitter::Proportional(1.5))
                .build()
                .is_err()
        );
        assert!(Constant::new(d(1)).with_max_attempts(0).is_err());
        assert!(Steps::new(Vec::new()).is_err());
    }
}
