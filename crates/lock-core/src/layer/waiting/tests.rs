use std::time::Duration;

use super::*;

#[test]
fn what_is_left_of_a_policy_after_the_first_attempt() {
    let d = Duration::from_millis(100);
    assert_eq!(rest_of(&WaitPolicy::NoWait, Duration::ZERO), None);
    assert_eq!(rest_of(&WaitPolicy::Retry { retries: 0, delay: d, jitter: 0.1 }, Duration::ZERO), None);
    assert_eq!(
        rest_of(&WaitPolicy::Retry { retries: 3, delay: d, jitter: 0.1 }, Duration::from_secs(9)),
        Some(WaitPolicy::Retry { retries: 3, delay: d, jitter: 0.1 }),
        "the delays are the budget: all of them are left"
    );
    let deadline =
        WaitPolicy::Deadline { timeout: Duration::from_secs(2), min_delay: d, max_delay: d, jitter: 0.0 };
    assert_eq!(
        rest_of(&deadline, Duration::from_millis(500)),
        Some(WaitPolicy::Deadline {
            timeout: Duration::from_millis(1500),
            min_delay: d,
            max_delay: d,
            jitter: 0.0
        })
    );
    assert_eq!(rest_of(&deadline, Duration::from_secs(2)), None);
    assert_eq!(rest_of(&deadline, Duration::from_secs(3)), None);
}
