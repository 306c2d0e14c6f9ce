//! Input rules, in one place, applied by every backend before it touches a server.
//!
//! | input | rule |
//! |---|---|
//! | key | not empty, at most [`MAX_KEY_LEN`] bytes, no NUL byte |
//! | owner | not empty, at most [`MAX_OWNER_LEN`] bytes, no NUL byte |
//! | ttl | at least [`MIN_TTL`], at most [`MAX_TTL`] |
//! | wait policy | jitter in `0.0..=1.0`, delays and timeouts at most [`MAX_WAIT`], at most [`MAX_RETRIES`] retries, each delay between attempts at least [`MIN_RETRY_DELAY`] |
//! | list prefix | at most [`MAX_KEY_LEN`] bytes, no NUL byte (may be empty) |
//!
//! A backend with a tighter limit (a column width, say) checks it in addition and reports it
//! the same way: [`LockError::InvalidArgument`] naming the field and the rule.

use std::time::Duration;

use crate::error::{LockError, Result};

/// Longest accepted key, in bytes. Fits a MySQL `VARBINARY(255)` primary key, a Redis key with
/// the library's prefixes, and an etcd key.
pub const MAX_KEY_LEN: usize = 255;
/// Longest accepted owner id, in bytes.
pub const MAX_OWNER_LEN: usize = 255;
/// Shortest accepted TTL (every backend stores at least millisecond precision).
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// Longest accepted TTL: seven days. A lock meant to outlive that wants a refresh loop.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest accepted wait (retry delay or deadline): one day.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Most retries a [`WaitPolicy::Retry`](crate::WaitPolicy::Retry) may ask for. A caller that
/// wants to wait longer uses [`WaitPolicy::Deadline`](crate::WaitPolicy::Deadline).
pub const MAX_RETRIES: u32 = 10_000;
/// Shortest accepted delay between two attempts: a smaller one would make a waiter hammer the
/// server (or spin) instead of waiting.
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(1);

fn text(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(LockError::invalid(what, "must not be empty"));
    }
    if value.len() > max {
        return Err(LockError::invalid(
            what,
            format!("is {} bytes long; the limit is {max} bytes", value.len()),
        ));
    }
    if value.contains('\0') {
        return Err(LockError::invalid(what, "must not contain a NUL byte"));
    }
    Ok(())
}

/// Checks a lock key.
pub fn key(key: &str) -> Result<()> {
    text("key", key, MAX_KEY_LEN)
}

/// Checks an owner id.
pub fn owner(owner: &str) -> Result<()> {
    text("owner", owner, MAX_OWNER_LEN)
}

/// Checks a TTL.
pub fn ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(LockError::invalid("ttl", "must be greater than zero"));
    }
    if ttl < MIN_TTL {
        return Err(LockError::invalid("ttl", format!("{ttl:?} is below the minimum of {MIN_TTL:?}")));
    }
    if ttl > MAX_TTL {
        return Err(LockError::invalid("ttl", format!("{ttl:?} exceeds the maximum of {MAX_TTL:?}")));
    }
    Ok(())
}

/// Checks a `list` prefix (the empty prefix lists everything).
pub fn prefix(prefix: &str) -> Result<()> {
    if prefix.len() > MAX_KEY_LEN {
        return Err(LockError::invalid(
            "prefix",
            format!("is {} bytes long; the limit is {MAX_KEY_LEN} bytes", prefix.len()),
        ));
    }
    if prefix.contains('\0') {
        return Err(LockError::invalid("prefix", "must not contain a NUL byte"));
    }
    Ok(())
}

/// Checks a wait duration (`what` names the field).
pub fn wait(what: &'static str, d: Duration) -> Result<()> {
    if d > MAX_WAIT {
        return Err(LockError::invalid(what, format!("{d:?} exceeds the maximum of {MAX_WAIT:?}")));
    }
    Ok(())
}

/// Checks a delay between two attempts (`what` names the field): [`MIN_RETRY_DELAY`] to
/// [`MAX_WAIT`].
pub fn retry_delay(what: &'static str, d: Duration) -> Result<()> {
    if d < MIN_RETRY_DELAY {
        return Err(LockError::invalid(
            what,
            format!("{d:?} is below the minimum of {MIN_RETRY_DELAY:?} between attempts"),
        ));
    }
    wait(what, d)
}

/// Checks a retry count.
pub fn retries(n: u32) -> Result<()> {
    if n > MAX_RETRIES {
        return Err(LockError::invalid(
            "retries",
            format!("{n} exceeds the maximum of {MAX_RETRIES}; use a deadline policy to wait longer"),
        ));
    }
    Ok(())
}

/// Checks a jitter fraction.
pub fn jitter(j: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&j) {
        return Err(LockError::invalid("jitter", format!("{j} is outside 0.0..=1.0")));
    }
    Ok(())
}

/// Checks key, owner and TTL together (the arguments of `refresh_lock`).
pub fn key_owner_ttl(k: &str, o: &str, t: Duration) -> Result<()> {
    key(k)?;
    owner(o)?;
    ttl(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what(r: Result<()>) -> &'static str {
        match r {
            Err(LockError::InvalidArgument { what, .. }) => what,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn rejects_each_rule_and_names_the_field() {
        assert_eq!(what(key("")), "key");
        assert_eq!(what(key(&"k".repeat(MAX_KEY_LEN + 1))), "key");
        assert_eq!(what(key("a\0b")), "key");
        assert_eq!(what(owner("")), "owner");
        assert_eq!(what(owner("x\0")), "owner");
        assert_eq!(what(ttl(Duration::ZERO)), "ttl");
        assert_eq!(what(ttl(Duration::from_micros(10))), "ttl");
        assert_eq!(what(ttl(MAX_TTL + Duration::from_secs(1))), "ttl");
        assert_eq!(what(prefix("p\0")), "prefix");
        assert_eq!(what(jitter(1.5)), "jitter");
        assert_eq!(what(jitter(f64::NAN)), "jitter");
        assert_eq!(what(wait("delay", MAX_WAIT * 2)), "delay");
    }

    #[test]
    fn accepts_the_boundaries() {
        key(&"k".repeat(MAX_KEY_LEN)).unwrap();
        key("weird *?[]{} key with spaces").unwrap();
        owner("host:1234:abcd").unwrap();
        ttl(MIN_TTL).unwrap();
        ttl(MAX_TTL).unwrap();
        prefix("").unwrap();
        jitter(0.0).unwrap();
        jitter(1.0).unwrap();
    }
}
