//! Where a lock lives in Redis: the key layout, its hash tag, and the `SCAN` pattern of `list`.
//!
//! A user key `k` under the prefix `p` maps to
//!
//! | what | Redis name | type |
//! |---|---|---|
//! | the lock | `p{enc(k)}` | string `"<token> <depth> <owner>\0<start>"` (see `scripts`); expires with the lease |
//! | its fencing counter | `p{enc(k)}:fence` | string (integer); expires `fence_idle` after the last acquisition's lease |
//! | its release channel | `p{enc(k)}:released` | pub/sub channel |
//! | a published wait for it | `p{enc(k)}:wait:<id>` | string `"<since ms> <owner>"`; expires unless renewed |
//! | the index of the waits under `p` | `pwaits` | sorted set of wait names, scored by when each expires |
//!
//! The index lets the deadlock detector read the waits without scanning the whole keyspace;
//! its name has no `{`, so no lock key (all of which have `{` right after the prefix) can be
//! it. In a cluster it lives in a slot of its own, written by a command of its own.
//!
//! `enc` escapes `%`, `{` and `}` as `%25`, `%7B` and `%7D`, so the braces the layout adds are
//! the only ones: the hash tag is exactly `enc(k)`, never empty, and the lock and its counter
//! always share a cluster slot whatever the key contains. Everything else (spaces, `*`, `?`,
//! `[`, control characters, any UTF-8) is stored as is; glob characters only matter in the
//! `SCAN MATCH` pattern of `list`, where they are escaped.

/// The names of one key's lock, counter and channel.
#[derive(Clone, Debug)]
pub(crate) struct KeyNames {
    /// The lock key.
    pub(crate) lock: String,
    /// The fencing counter.
    pub(crate) fence: String,
    /// The channel a full release is published on.
    pub(crate) channel: String,
}

/// The key layout under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct KeySpace {
    prefix: String,
}

const FENCE_SUFFIX: &str = ":fence";
const CHANNEL_SUFFIX: &str = ":released";
const WAIT_INFIX: &str = ":wait:";
const WAITS_INDEX: &str = "waits";

impl KeySpace {
    /// A layout under `prefix`, which must not contain `{` or `}` (checked by the config).
    pub(crate) fn new(prefix: &str) -> Self {
        KeySpace { prefix: prefix.to_owned() }
    }

    /// The lock key of `key`.
    pub(crate) fn lock_key(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + key.len() + 2);
        s.push_str(&self.prefix);
        s.push('{');
        encode_into(key, &mut s);
        s.push('}');
        s
    }

    /// Every name of `key` (on every lock and unlock: built without the formatting machinery).
    pub(crate) fn names(&self, key: &str) -> KeyNames {
        let lock = self.lock_key(key);
        let with = |suffix: &str| {
            let mut s = String::with_capacity(lock.len() + suffix.len());
            s.push_str(&lock);
            s.push_str(suffix);
            s
        };
        KeyNames { fence: with(FENCE_SUFFIX), channel: with(CHANNEL_SUFFIX), lock }
    }

    /// The `SCAN MATCH` pattern that finds every lock key whose user key starts with
    /// `prefix` (and also their counters, which [`decode_lock_key`](Self::decode_lock_key)
    /// filters out).
    pub(crate) fn scan_pattern(&self, prefix: &str) -> String {
        let mut literal = String::with_capacity(self.prefix.len() + prefix.len() + 1);
        literal.push_str(&self.prefix);
        literal.push('{');
        encode_into(prefix, &mut literal);
        let mut pattern = glob_escape(&literal);
        pattern.push('*');
        pattern
    }

    /// The name of the sorted set that indexes the waits under this prefix.
    pub(crate) fn waits_index(&self) -> String {
        format!("{}{WAITS_INDEX}", self.prefix)
    }

    /// The name of wait `id` for `key` (in the lock's slot).
    pub(crate) fn wait_key(&self, key: &str, id: u64) -> String {
        format!("{}{WAIT_INFIX}{id}", self.lock_key(key))
    }

    /// The user key and wait id of a wait's name, or `None` for any other name.
    pub(crate) fn decode_wait_key(&self, name: &str) -> Option<(String, u64)> {
        let (lock, id) = name.rsplit_once(WAIT_INFIX)?;
        let id = id.parse().ok().filter(|_| id.bytes().all(|b| b.is_ascii_digit()))?;
        Some((self.decode_lock_key(lock)?, id))
    }

    /// The user key of a lock key name, or `None` for any other name (a counter, a foreign key).
    pub(crate) fn decode_lock_key(&self, name: &str) -> Option<String> {
        let tag = name.strip_prefix(&self.prefix)?.strip_prefix('{')?.strip_suffix('}')?;
        if tag.contains(['{', '}']) {
            return None;
        }
        decode(tag)
    }
}

fn encode_into(key: &str, out: &mut String) {
    if !key.contains(['%', '{', '}']) {
        out.push_str(key);
        return;
    }
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

fn decode(tag: &str) -> Option<String> {
    let mut out = String::with_capacity(tag.len());
    let mut rest = tag;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3)?;
        out.push(match esc {
            "%25" => '%',
            "%7B" => '{',
            "%7D" => '}',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Escapes the characters Redis glob patterns give a meaning to.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis' rule for the part of a key that picks its cluster slot.
    fn hash_tag(name: &str) -> &str {
        if let Some(open) = name.find('{') {
            if let Some(len) = name[open + 1..].find('}') {
                if len > 0 {
                    return &name[open + 1..open + 1 + len];
                }
            }
        }
        name
    }

    const AWKWARD: &[&str] = &[
        "plain",
        "a}b",
        "}",
        "{}",
        "{x}",
        "%7D",
        "100%",
        "*",
        "jobs/[abc]?*",
        "with spaces and \t tab",
        "\u{1}\u{7f}é漢字🔒",
        "back\\slash",
    ];

    #[test]
    fn lock_and_counter_share_a_non_empty_hash_tag_for_any_key() {
        let ks = KeySpace::new("distlock:");
        for key in AWKWARD {
            let n = ks.names(key);
            let tag = hash_tag(&n.lock);
            assert!(!tag.is_empty() && tag != n.lock, "{key:?}: {}", n.lock);
            assert_eq!(tag, hash_tag(&n.fence), "{key:?}");
            assert_eq!(
                fred::util::redis_keyslot(n.lock.as_bytes()),
                fred::util::redis_keyslot(n.fence.as_bytes())
            );
            assert_eq!(ks.decode_lock_key(&n.lock).as_deref(), Some(*key), "round trip");
            assert_eq!(ks.decode_lock_key(&n.fence), None, "a counter is not a lock");
            assert_eq!(ks.decode_lock_key(&n.channel), None);
            let wait = ks.wait_key(key, 42);
            assert_eq!(hash_tag(&wait), tag, "{key:?}: a wait lives in its lock's slot");
            assert_eq!(ks.decode_wait_key(&wait), Some((key.to_string(), 42)), "round trip");
            assert_eq!(ks.decode_lock_key(&wait), None, "a wait is not a lock");
            assert_eq!(ks.decode_wait_key(&n.lock), None, "a lock is not a wait");
            assert_eq!(ks.decode_wait_key(&n.fence), None);
        }
    }

    #[test]
    fn distinct_keys_never_share_a_name() {
        let ks = KeySpace::new("p:");
        let mut seen = std::collections::HashSet::new();
        for key in AWKWARD {
            assert!(seen.insert(ks.lock_key(key)), "{key:?}");
        }
    }

    #[test]
    fn foreign_names_are_not_decoded() {
        let ks = KeySpace::new("p:");
        for name in ["other", "p:", "p:{a", "p:{a}x", "q:{a}", "p:{a%}", "p:{a%7}", "p:{%zz}"] {
            assert_eq!(ks.decode_lock_key(name), None, "{name}");
        }
        for name in
            ["p:{a}:wait:", "p:{a}:wait:x", "p:{a}:wait:+1", "p:{a}:wait:-1", "q:{a}:wait:1", "p:{a}x:wait:1"]
        {
            assert_eq!(ks.decode_wait_key(name), None, "{name}");
        }
    }

    /// A small implementation of Redis' glob matching (`stringmatchlen`) for `*`, `?`, `\`
    /// and literals: enough to check the escaping.
    fn glob_match(pattern: &[char], s: &[char]) -> bool {
        match pattern.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| glob_match(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && glob_match(rest, &s[1..]),
            Some(('[', _)) => panic!("unescaped ["),
            Some(('\\', rest)) => {
                let (c, rest) = rest.split_first().expect("dangling escape");
                s.first() == Some(c) && glob_match(rest, &s[1..])
            }
            Some((c, rest)) => s.first() == Some(c) && glob_match(rest, &s[1..]),
        }
    }

    #[test]
    fn scan_pattern_matches_exactly_the_keys_under_a_prefix() {
        let ks = KeySpace::new("distlock:");
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        for prefix in ["", "jobs/", "a}", "*", "[x]", "jobs/[abc]?", "100%"] {
            let pattern = chars(&ks.scan_pattern(prefix));
            for key in AWKWARD.iter().chain(&["jobs/a", "jobs/[abc]?*", "a}b", "[x]y", "*z"]) {
                let matched = glob_match(&pattern, &chars(&ks.lock_key(key)));
                assert_eq!(matched, key.starts_with(prefix), "prefix {prefix:?} key {key:?}");
            }
        }
    }
}
