//! How locks are laid out in etcd's key space.
//!
//! Every acquisition attempt writes one *entry*:
//!
//! ```text
//! <prefix><lock key> NUL <lease id, 16 hex digits>   =   "<depth> <granted ttl s> <owner>" NUL "<start>"
//! ```
//!
//! attached to the attempt's own lease. The entries of one lock are exactly the keys in
//! `[<prefix><lock key> NUL, <prefix><lock key> 0x01)`: lock keys never contain a NUL byte (the
//! input rules forbid it), so no other lock's entries fall in that range, not even those of
//! a lock whose key extends this one (`jobs` and `jobs/a`). The holder is the entry with the
//! lowest create revision; the others are the queue, in create-revision order.
//!
//! `<start>` is the wall clock of the client that wrote the entry, in milliseconds since the
//! Unix epoch: when its owner took the lock (etcd keeps no time with a key). It follows a NUL
//! byte, which no owner contains, so it can never be read as part of the owner; a value
//! without it (written by an earlier version) has an unknown start.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::KeyValue;

/// Key space of one provider.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Layout { prefix: prefix.to_string() }
    }

    /// First key of `key`'s entries.
    pub(crate) fn dir(&self, key: &str) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.prefix.len() + key.len() + 1);
        v.extend_from_slice(self.prefix.as_bytes());
        v.extend_from_slice(key.as_bytes());
        v.push(0);
        v
    }

    /// End (exclusive) of `key`'s entries.
    pub(crate) fn dir_end(&self, key: &str) -> Vec<u8> {
        let mut v = self.dir(key);
        *v.last_mut().expect("dir ends with NUL") = 1;
        v
    }

    /// The entry of an attempt made with lease `lease`.
    pub(crate) fn entry(&self, key: &str, lease: i64) -> Vec<u8> {
        let mut v = self.dir(key);
        v.extend_from_slice(format!("{lease:016x}").as_bytes());
        v
    }

    /// First key of every lock whose key starts with `prefix`.
    pub(crate) fn scan(&self, prefix: &str) -> Vec<u8> {
        format!("{}{prefix}", self.prefix).into_bytes()
    }

    /// End (exclusive) of [`scan`](Self::scan): the etcd "prefix end".
    pub(crate) fn scan_end(&self, prefix: &str) -> Vec<u8> {
        let mut end = self.scan(prefix);
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return end;
            }
        }
        // Everything from the start: etcd's "\0" range end means "to the end of the key space".
        vec![0]
    }

    /// The lock key of an entry, if `raw` is one of this layout's entries (lock keys are never
    /// empty and never contain NUL: anything else under the prefix, such as the published
    /// waits, is not a lock).
    pub(crate) fn lock_key<'a>(&self, raw: &'a [u8]) -> Option<&'a str> {
        let rest = raw.strip_prefix(self.prefix.as_bytes())?;
        let nul = rest.iter().rposition(|&b| b == 0)?;
        let key = &rest[..nul];
        if key.is_empty() || key.contains(&0) {
            return None;
        }
        std::str::from_utf8(key).ok()
    }
}

/// What an entry's value says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Value {
    /// Reentry depth (1 for a first acquisition and for every queued attempt).
    pub(crate) depth: u32,
    /// TTL in whole seconds that etcd granted the entry's lease.
    pub(crate) ttl: i64,
    /// The owner.
    pub(crate) owner: String,
    /// When the owner took the lock (depth 1), by the writing client's wall clock in
    /// milliseconds since the Unix epoch ([`wall_ms`]); kept by re-entry, refresh and release
    /// of a nested level. `None` when unknown.
    pub(crate) start: Option<u64>,
}

impl Value {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut text = format!("{} {} {}", self.depth, self.ttl, self.owner);
        if let Some(start) = self.start {
            text.push('\0');
            text.push_str(&start.to_string());
        }
        text.into_bytes()
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<Value> {
        let text = std::str::from_utf8(raw).ok()?;
        let (text, start) = match text.split_once('\0') {
            Some((text, start)) => (text, Some(start.parse().ok()?)),
            None => (text, None),
        };
        let mut parts = text.splitn(3, ' ');
        let depth = parts.next()?.parse().ok()?;
        let ttl = parts.next()?.parse().ok()?;
        let owner = parts.next()?.to_string();
        Some(Value { depth, ttl, owner, start })
    }

    /// How long the lock has been held, by this client's wall clock (zero when the start is
    /// unknown or in this clock's future).
    pub(crate) fn held_for(&self) -> Duration {
        self.start.map_or(Duration::ZERO, |start| Duration::from_millis(wall_ms().saturating_sub(start)))
    }
}

/// This client's wall clock, in milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One entry as read from etcd.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) key: Vec<u8>,
    pub(crate) create_revision: i64,
    pub(crate) mod_revision: i64,
    pub(crate) lease: i64,
    pub(crate) value: Value,
}

impl Entry {
    /// An entry from a key-value pair; a value not written by this crate is reported with
    /// the raw value as owner, so that it is still visible (and never taken for ours).
    pub(crate) fn from_kv(kv: &KeyValue) -> Entry {
        let value = Value::decode(kv.value()).unwrap_or_else(|| Value {
            depth: 1,
            ttl: 0,
            owner: String::from_utf8_lossy(kv.value()).into_owned(),
            start: None,
        });
        Entry {
            key: kv.key().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
            value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_range_holds_only_its_own_entries() {
        let l = Layout::new("p/");
        let (dir, end) = (l.dir("jobs"), l.dir_end("jobs"));
        let mine = l.entry("jobs", 0x2a);
        let longer = l.entry("jobs/a", 0x2a);
        assert!(dir <= mine && mine < end);
        assert!(!(dir <= longer && longer < end), "jobs/a is another lock");
        assert_eq!(l.lock_key(&mine), Some("jobs"));
        assert_eq!(l.lock_key(&longer), Some("jobs/a"));
        assert_eq!(l.lock_key(b"other/jobs\0x"), None);
        assert_eq!(&mine[mine.len() - 16..], b"000000000000002a");
    }

    #[test]
    fn scan_covers_every_lock_under_a_prefix() {
        let l = Layout::new("p/");
        let (start, end) = (l.scan("jobs/"), l.scan_end("jobs/"));
        for k in ["jobs/a", "jobs/b/c"] {
            let e = l.entry(k, 1);
            assert!(start <= e && e < end, "{k}");
        }
        assert!(l.entry("jobs0", 1) >= end);
        assert_eq!(Layout::new("").scan_end(""), vec![0]);
    }

    #[test]
    fn values_round_trip_with_spaces_in_the_owner() {
        let v = Value { depth: 3, ttl: 30, owner: "host a:12 b".into(), start: Some(1_700_000_000_123) };
        assert_eq!(v.encode(), b"3 30 host a:12 b\x001700000000123".to_vec());
        assert_eq!(Value::decode(&v.encode()), Some(v));
        assert_eq!(Value::decode(b"garbage"), None);
        assert_eq!(Value::decode(b"1 30 o\0not a time"), None);
    }

    #[test]
    fn a_value_without_a_start_reads_as_unknown_and_held_for_nothing() {
        let v = Value::decode(b"2 30 7 on host a").unwrap();
        assert_eq!((v.depth, v.owner.as_str(), v.start), (2, "7 on host a", None));
        assert_eq!(v.held_for(), Duration::ZERO);
        let future = Value { start: Some(wall_ms() + 60_000), ..v.clone() };
        assert_eq!(future.held_for(), Duration::ZERO);
        let past = Value { start: Some(wall_ms() - 5_000), ..v };
        assert!(past.held_for() >= Duration::from_secs(5));
    }
}
