//! The lock table: its validated name, its schema and every statement run against it.
//!
//! The table name is the only text ever spliced into SQL, and only after [`TableName::new`]
//! accepted it as a plain identifier; every value is a bound parameter.

use lock_core::{LockError, Result};

/// Default table name, as in the original design.
pub const DEFAULT_TABLE: &str = "distributed_locks";

/// Longest accepted table name (MySQL's identifier limit).
pub const MAX_TABLE_NAME_LEN: usize = 64;

/// Bits of the fencing token that count take-overs of one row (the rest is the row's id).
pub(crate) const GENERATION_BITS: u32 = 16;
/// Largest generation before the row has to be replaced by a new one.
pub(crate) const MAX_GENERATION: u64 = (1 << GENERATION_BITS) - 1;

/// `last_op` codes written by the acquire statement (and read back through `LAST_INSERT_ID`).
pub(crate) mod op {
    /// The owner re-entered its live lock.
    pub(crate) const REENTERED: u64 = 0;
    /// A released row was taken.
    pub(crate) const TOOK_RELEASED: u64 = 1;
    /// An expired lease was taken over (lazy cleanup).
    pub(crate) const TOOK_EXPIRED: u64 = 2;
    /// Held by another owner.
    pub(crate) const BUSY: u64 = 3;
    /// Free, but the row's generation counter is exhausted: delete it and insert afresh.
    pub(crate) const EXHAUSTED: u64 = 4;
}

/// A table name that is safe to splice into SQL: ASCII letters, digits and `_`, not starting
/// with a digit, at most [`MAX_TABLE_NAME_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName(String);

impl TableName {
    /// Validates `name`; anything else is an [`InvalidArgument`](LockError::InvalidArgument).
    pub fn new(name: &str) -> Result<Self> {
        let why = if name.is_empty() {
            Some("must not be empty".to_string())
        } else if name.len() > MAX_TABLE_NAME_LEN {
            Some(format!("is {} bytes long; the limit is {MAX_TABLE_NAME_LEN}", name.len()))
        } else if name.starts_with(|c: char| c.is_ascii_digit()) {
            Some("must not start with a digit".to_string())
        } else {
            name.chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
                .map(|c| format!("contains {c:?}; only ASCII letters, digits and '_' are allowed"))
        };
        match why {
            Some(why) => Err(LockError::invalid("table name", format!("`{}`: {why}", name.escape_debug()))),
            None => Ok(TableName(name.to_string())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Every statement, rendered once for one table.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) create: String,
    pub(crate) insert: String,
    pub(crate) acquire: String,
    pub(crate) reentry: String,
    pub(crate) drop_exhausted: String,
    pub(crate) unlock_last: String,
    pub(crate) unlock_nested: String,
    pub(crate) undo_last: String,
    pub(crate) undo_nested: String,
    pub(crate) refresh: String,
    pub(crate) refreshed: String,
    pub(crate) holder: String,
    pub(crate) inspect: String,
    pub(crate) list: String,
    pub(crate) reap: String,
}

/// The columns of a lock as `LockInfo` needs them, in the order `row_to_info` reads.
const INFO_COLUMNS: &str = "lock_key, owner, (id << 16) | generation, depth, \
     TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at)";

impl Statements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table.as_str();
        Statements {
            // One row per held key. A release deletes it; an expired row stays until an
            // acquisition takes it over or the reaper removes it. So the table stays as small
            // as the set of held locks, and `expires_at` needs no index: the reaper's scan is
            // cheap, while an index would cost every insert and delete, and would make the
            // optimizer weigh an index dive for every `expires_at > now` predicate.
            create: format!(
                "CREATE TABLE IF NOT EXISTS `{t}` (
                    lock_key VARBINARY(255) NOT NULL,
                    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
                    owner VARBINARY(255) NOT NULL,
                    depth INT UNSIGNED NOT NULL,
                    generation INT UNSIGNED NOT NULL DEFAULT 0,
                    last_op TINYINT UNSIGNED NOT NULL DEFAULT 5,
                    waits BIGINT UNSIGNED NOT NULL DEFAULT 0,
                    acquired_at DATETIME(6) NOT NULL,
                    expires_at DATETIME(6) NOT NULL,
                    PRIMARY KEY (lock_key),
                    UNIQUE KEY `{t}_id` (id)
                ) ENGINE=InnoDB"
            ),
            // The first attempt on a key this provider does not hold: a plain insert, the
            // cheapest statement that can take a free key (the raw INSERT+DELETE pattern).
            // A duplicate key sends the caller to `acquire`. Parameters: key, owner, ttl µs.
            insert: format!(
                "INSERT INTO `{t}` (lock_key, owner, depth, generation, last_op, waits, acquired_at, expires_at)
                 VALUES (?, ?, 1, 0, 5, 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)"
            ),
            // One statement decides and acts. The first assignment records the outcome in
            // `last_op` from the row as it was; the later ones read that new value (MySQL and
            // MariaDB assign left to right). `waits` changes on every non-acquiring outcome so
            // that "affected rows" is 2 for every update and 1 only for an insert, whatever the
            // client's FOUND_ROWS flag. LAST_INSERT_ID carries the token and outcome back.
            // Parameters: key, owner, ttl µs, owner, owner, ttl µs (x3).
            acquire: format!(
                "INSERT INTO `{t}` (lock_key, owner, depth, generation, last_op, waits, acquired_at, expires_at)
                 VALUES (?, ?, 1, 0, 5, 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
                 ON DUPLICATE KEY UPDATE
                   last_op = CASE
                       WHEN expires_at > UTC_TIMESTAMP(6) AND owner = ? THEN {reentered}
                       WHEN expires_at > UTC_TIMESTAMP(6) THEN {busy}
                       WHEN generation >= {max_gen} THEN {exhausted}
                       WHEN depth = 0 THEN {released}
                       ELSE {expired} END,
                   depth = CASE WHEN last_op = {reentered} THEN depth + 1
                                WHEN last_op IN ({released}, {expired}) THEN 1 ELSE depth END,
                   generation = IF(last_op IN ({released}, {expired}), generation + 1, generation),
                   owner = IF(last_op IN ({released}, {expired}), ?, owner),
                   acquired_at = IF(last_op IN ({released}, {expired}), UTC_TIMESTAMP(6), acquired_at),
                   expires_at = CASE
                       WHEN last_op = {reentered}
                           THEN GREATEST(expires_at, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
                       WHEN last_op IN ({released}, {expired})
                           THEN UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
                       ELSE expires_at END,
                   waits = waits + IF(last_op >= {busy}, 1, 0)
                       + 0 * LAST_INSERT_ID((((id << {gen_bits}) | generation) << 3) | last_op)",
                reentered = op::REENTERED,
                released = op::TOOK_RELEASED,
                expired = op::TOOK_EXPIRED,
                busy = op::BUSY,
                exhausted = op::EXHAUSTED,
                max_gen = MAX_GENERATION,
                gen_bits = GENERATION_BITS,
            ),
            // After a re-entry: the depth and TTL the lease reports.
            reentry: format!(
                "SELECT depth, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at)
                 FROM `{t}` WHERE lock_key = ? AND owner = ?"
            ),
            drop_exhausted: format!(
                "DELETE FROM `{t}` WHERE lock_key = ? AND expires_at <= UTC_TIMESTAMP(6) AND generation >= {MAX_GENERATION}"
            ),
            // Release: the last level deletes the row (the common case, one statement) ...
            unlock_last: format!(
                "DELETE FROM `{t}` WHERE lock_key = ? AND owner = ? AND depth = 1 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            // ... a nested level only counts down.
            unlock_nested: format!(
                "UPDATE `{t}` SET depth = depth - 1
                 WHERE lock_key = ? AND owner = ? AND depth > 1 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            // The same for exactly one acquisition (owner and token): undoes a lock whose
            // caller went away, never a later acquisition of the key.
            undo_last: format!(
                "DELETE FROM `{t}` WHERE lock_key = ? AND owner = ? AND ((id << {GENERATION_BITS}) | generation) = ?
                   AND depth = 1 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            undo_nested: format!(
                "UPDATE `{t}` SET depth = depth - 1
                 WHERE lock_key = ? AND owner = ? AND ((id << {GENERATION_BITS}) | generation) = ?
                   AND depth > 1 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            // `last_op` toggles so that the row always changes (affected rows 1) even if the
            // new expiry equals the old one to the microsecond.
            refresh: format!(
                "UPDATE `{t}` SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND,
                        last_op = IF(last_op = 6, 7, 6)
                 WHERE lock_key = ? AND owner = ? AND expires_at > UTC_TIMESTAMP(6)"
            ),
            refreshed: format!(
                "SELECT (id << {GENERATION_BITS}) | generation, depth,
                        TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at)
                 FROM `{t}` WHERE lock_key = ? AND owner = ? AND expires_at > UTC_TIMESTAMP(6)"
            ),
            holder: format!("SELECT owner, expires_at > UTC_TIMESTAMP(6) FROM `{t}` WHERE lock_key = ?"),
            inspect: format!(
                "SELECT {INFO_COLUMNS} FROM `{t}` WHERE lock_key = ? AND expires_at > UTC_TIMESTAMP(6)"
            ),
            list: format!(
                "SELECT {INFO_COLUMNS} FROM `{t}`
                 WHERE lock_key LIKE ? ESCAPE '!' AND expires_at > UTC_TIMESTAMP(6) ORDER BY lock_key"
            ),
            // Rows whose lease expired more than `grace` ago.
            reap: format!(
                "DELETE FROM `{t}` WHERE expires_at <= UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT 1000"
            ),
        }
    }
}

/// Escapes a `list` prefix for `LIKE ... ESCAPE '!'` and appends the wildcard.
pub(crate) fn like_prefix(prefix: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 2);
    for b in prefix.bytes() {
        if matches!(b, b'!' | b'%' | b'_') {
            out.push(b'!');
        }
        out.push(b);
    }
    out.push(b'%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["distributed_locks", "custom_locks", "_x", "Locks2", &"a".repeat(64)] {
            assert_eq!(TableName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_anything_that_could_escape_the_identifier() {
        for bad in [
            "",
            "locks; DROP TABLE x",
            "lo`cks",
            "locks`; DROP TABLE x; --",
            "db.locks",
            "1locks",
            "locks ",
            "lôcks",
            "locks\0",
            &"a".repeat(65),
        ] {
            match TableName::new(bad) {
                Err(LockError::InvalidArgument { what: "table name", .. }) => {}
                other => panic!("{bad:?} -> {other:?}"),
            }
        }
    }

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("a_b%c!d"), b"a!_b!%c!!d%".to_vec());
        assert_eq!(like_prefix(""), b"%".to_vec());
    }
}
