//! Counting events in a sliding window: how bunched up arrivals or closes were.

use std::ops::Sub;
use std::time::Duration;

/// The most of the `sorted` instants (or offsets) that fall within any `window`: a window `[t, t + window)` slid over
/// them. `sorted` must be in ascending order.
///
/// ```
/// use connman_tests::window::most_within;
/// use std::time::Duration;
///
/// let ms = |n| Duration::from_millis(n);
/// let at = [ms(0), ms(10), ms(90), ms(100), ms(150), ms(400)];
/// assert_eq!(most_within(&at, ms(100)), 3); // 90, 100 and 150
/// assert_eq!(most_within(&at, ms(1000)), 6);
/// assert_eq!(most_within::<Duration>(&[], ms(100)), 0);
/// ```
pub fn most_within<T>(sorted: &[T], window: Duration) -> usize
where
    T: Copy + Sub<Output = Duration>,
{
    let mut from = 0;
    let mut most = 0;
    for (to, &at) in sorted.iter().enumerate() {
        while at - sorted[from] >= window {
            from += 1;
        }
        most = most.max(to + 1 - from);
    }
    most
}
