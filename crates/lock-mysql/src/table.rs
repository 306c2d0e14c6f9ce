//! The lock table: its validated name, its schema and every statement run against it.
//!
//! The table name is the only text ever spliced into SQL, and only after [`TableName::new`]
//! accepted it as a plain identifier; every value is a bound parameter.

use lock_core::{LockError, Result};

/// Default table name.
pub const DEFAULT_TABLE: &str = "distributed_locks";

/// Longest accepted table name: MySQL's identifier limit (64) less the `_waits` of the table
/// beside it that holds the published waits.
pub const MAX_TABLE_NAME_LEN: usize = 64 - WAITS_SUFFIX.len();

/// The waits table is named after the lock table with this suffix.
pub const WAITS_SUFFIX: &str = "_waits";

/// Bits of the fencing token that count acquisitions of one row (the rest is the row's id).
pub(crate) const GENERATION_BITS: u32 = 16;
/// A row is reaped only while its generation is below this: then its last token,
/// `(id << 16) + generation`, is below `(id + 1) << 16`, so the next row of the key, whose id
/// is larger, starts above every token the key ever had. A row acquired more often in one
/// life stays in the table for good (one row per such hot key).
pub(crate) const REAPABLE_GENERATIONS: u64 = 1 << GENERATION_BITS;

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
    pub(crate) acquire: String,
    pub(crate) take: String,
    pub(crate) reentry: String,
    pub(crate) unlock: String,
    pub(crate) undo: String,
    pub(crate) refresh: String,
    pub(crate) refreshed: String,
    pub(crate) holder: String,
    pub(crate) peek: String,
    pub(crate) inspect: String,
    pub(crate) list: String,
    pub(crate) reap: String,
    pub(crate) create_waits: String,
    pub(crate) post_wait: String,
    pub(crate) drop_wait: String,
    pub(crate) list_waits: String,
    pub(crate) reap_waits: String,
}

/// The fencing token of a row, in SQL.
const TOKEN: &str = "((id << 16) + generation)";

/// The columns of a lock as `LockInfo` needs them, in the order `row_to_info` reads: the TTL
/// left and the time held both by the server's clock (`acquired_at` is set by the acquisition
/// that made the holder, and kept by re-entry and refresh).
const INFO_COLUMNS: &str = "lock_key, owner, ((id << 16) + generation), depth, \
     TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at), \
     TIMESTAMPDIFF(MICROSECOND, acquired_at, UTC_TIMESTAMP(6))";

impl Statements {
    /// `guard` is put in front of every statement that reads or writes locks: on MariaDB a
    /// `SET STATEMENT ... FOR` that bounds the statement's run time on the server and pins the
    /// sql_mode, whatever the session says (see [`statement_guard`]); empty elsewhere.
    pub(crate) fn new(table: &TableName, guard: &str) -> Self {
        let t = table.as_str();
        let g = guard;
        Statements {
            // One row per key in use. A release keeps the row (free: depth 0, no owner), so
            // that the key's last fencing token stays; the reaper deletes rows that have been
            // free for the grace period. The id's index has the fixed name `id`: index names
            // are per table, and one derived from the table name could exceed the identifier
            // limit. `expires_at` needs no index: the reaper's scan is cheap, while an index
            // would cost every write.
            create: format!(
                "CREATE TABLE IF NOT EXISTS `{t}` (
                    lock_key VARBINARY(255) NOT NULL,
                    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
                    owner VARBINARY(255) NOT NULL,
                    depth INT UNSIGNED NOT NULL,
                    generation BIGINT UNSIGNED NOT NULL DEFAULT 0,
                    last_op TINYINT UNSIGNED NOT NULL DEFAULT 5,
                    waits BIGINT UNSIGNED NOT NULL DEFAULT 0,
                    acquired_at DATETIME(6) NOT NULL,
                    expires_at DATETIME(6) NOT NULL,
                    PRIMARY KEY (lock_key),
                    UNIQUE KEY `id` (id)
                ) ENGINE=InnoDB"
            ),
            // One statement decides and acts, for every acquisition. A key without a row gets
            // one (token `id << 16`). Otherwise the first assignment records the outcome in
            // `last_op` from the row as it was; the later ones read that new value (MySQL and
            // MariaDB assign left to right; the guard pins a sql_mode without MariaDB's
            // SIMULTANEOUS_ASSIGNMENT). A take-over counts `generation` up, so the token
            // follows the key's previous token inside the statement, under the row lock.
            // `waits` changes on every non-acquiring outcome so that "affected rows" is 2 for
            // every update and 1 only for an insert, whatever the client's FOUND_ROWS flag.
            // LAST_INSERT_ID carries the token and outcome back.
            // Parameters: key, owner, ttl µs, owner, owner, ttl µs (x2).
            acquire: format!(
                "{g}INSERT INTO `{t}` (lock_key, owner, depth, generation, last_op, waits, acquired_at, expires_at)
                 VALUES (?, ?, 1, 0, 5, 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
                 ON DUPLICATE KEY UPDATE
                   last_op = CASE
                       WHEN expires_at > UTC_TIMESTAMP(6) AND depth > 0 AND owner = ? THEN {reentered}
                       WHEN expires_at > UTC_TIMESTAMP(6) AND depth > 0 THEN {busy}
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
                       + 0 * LAST_INSERT_ID(({TOKEN} << 3) | last_op)",
                reentered = op::REENTERED,
                released = op::TOOK_RELEASED,
                expired = op::TOOK_EXPIRED,
                busy = op::BUSY,
            ),
            // The acquire statement's "released row taken" case on its own, for a key this
            // provider freed last (see `freed`): a plain UPDATE of a free row costs the server
            // less than the INSERT that finds the duplicate and then updates. It counts the
            // generation up under the row lock exactly as the acquire statement does, and
            // matches no row if the key was taken, re-entered or reaped since.
            // LAST_INSERT_ID carries the token and outcome back, in the acquire's form.
            // Parameters: owner, ttl µs, key.
            take: format!(
                "{g}UPDATE `{t}` SET owner = ?, depth = 1, generation = generation + 1,
                        last_op = {released}, acquired_at = UTC_TIMESTAMP(6),
                        expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND,
                        waits = waits + 0 * LAST_INSERT_ID(({TOKEN} << 3) | last_op)
                 WHERE lock_key = ? AND depth = 0",
                released = op::TOOK_RELEASED,
            ),
            // After a re-entry: the depth and TTL the lease reports.
            reentry: format!(
                "{g}SELECT depth, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at)
                 FROM `{t}` WHERE lock_key = ? AND owner = ? AND depth > 0"
            ),
            // Release one level, owner-checked, in one statement: count the depth down, and at
            // zero mark the row free (no owner, expired now) without deleting it, so the key's
            // token stays. LAST_INSERT_ID carries the depth left (plus one) back.
            // Parameters: key, owner.
            unlock: format!(
                "{g}UPDATE `{t}` SET depth = depth - 1,
                        owner = IF(depth = 0, '', owner),
                        expires_at = IF(depth = 0, UTC_TIMESTAMP(6), expires_at),
                        waits = waits + 0 * LAST_INSERT_ID(depth + 1)
                 WHERE lock_key = ? AND owner = ? AND depth > 0 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            // The same for exactly one acquisition (owner and token): undoes a lock whose
            // caller went away, never a later acquisition of the key. Parameters: key, owner,
            // token.
            undo: format!(
                "{g}UPDATE `{t}` SET depth = depth - 1,
                        owner = IF(depth = 0, '', owner),
                        expires_at = IF(depth = 0, UTC_TIMESTAMP(6), expires_at),
                        waits = waits + 0 * LAST_INSERT_ID(depth + 1)
                 WHERE lock_key = ? AND owner = ? AND {TOKEN} = ? AND depth > 0
                   AND expires_at > UTC_TIMESTAMP(6)"
            ),
            // `last_op` toggles so that the row always changes (affected rows 1) even if the
            // new expiry equals the old one to the microsecond. LAST_INSERT_ID carries the
            // token back. Parameters: ttl µs, key, owner.
            refresh: format!(
                "{g}UPDATE `{t}` SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND,
                        last_op = IF(last_op = 6, 7, 6) + 0 * LAST_INSERT_ID({TOKEN})
                 WHERE lock_key = ? AND owner = ? AND depth > 0 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            refreshed: format!(
                "{g}SELECT depth FROM `{t}`
                 WHERE lock_key = ? AND owner = ? AND depth > 0 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            holder: format!(
                "{g}SELECT owner, expires_at > UTC_TIMESTAMP(6) AND depth > 0 FROM `{t}` WHERE lock_key = ?"
            ),
            // A waiter's retry reads this first, a consistent read that takes no row lock,
            // and writes (the acquire statement) only when the lock looks free.
            peek: format!(
                "{g}SELECT owner, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) FROM `{t}`
                 WHERE lock_key = ? AND depth > 0 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            inspect: format!(
                "{g}SELECT {INFO_COLUMNS} FROM `{t}`
                 WHERE lock_key = ? AND depth > 0 AND expires_at > UTC_TIMESTAMP(6)"
            ),
            list: format!(
                "{g}SELECT {INFO_COLUMNS} FROM `{t}`
                 WHERE lock_key LIKE ? ESCAPE '!' AND depth > 0 AND expires_at > UTC_TIMESTAMP(6)
                 ORDER BY lock_key"
            ),
            // Rows free (released or expired) for more than `grace`, whose generation still
            // lets the key's next row start above every token it had (see
            // REAPABLE_GENERATIONS).
            reap: format!(
                "{g}DELETE FROM `{t}` WHERE expires_at <= UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
                   AND generation < {REAPABLE_GENERATIONS} LIMIT 1000"
            ),
            // Published waits (deadlock detection), beside the locks and never read by a lock
            // statement: one row per waiting call, living until `expires_at` unless renewed.
            create_waits: format!(
                "CREATE TABLE IF NOT EXISTS `{t}{WAITS_SUFFIX}` (
                    lock_key VARBINARY(255) NOT NULL,
                    owner VARBINARY(255) NOT NULL,
                    wait_id BIGINT UNSIGNED NOT NULL,
                    since_ms BIGINT UNSIGNED NOT NULL,
                    expires_at DATETIME(6) NOT NULL,
                    PRIMARY KEY (lock_key, owner, wait_id)
                ) ENGINE=InnoDB"
            ),
            // Parameters: key, owner, id, since (ms since the epoch), ttl µs.
            post_wait: format!(
                "{g}INSERT INTO `{t}{WAITS_SUFFIX}` (lock_key, owner, wait_id, since_ms, expires_at)
                 VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
                 ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at)"
            ),
            drop_wait: format!(
                "{g}DELETE FROM `{t}{WAITS_SUFFIX}` WHERE lock_key = ? AND owner = ? AND wait_id = ?"
            ),
            list_waits: format!(
                "{g}SELECT lock_key, owner, wait_id, since_ms,
                        TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at)
                 FROM `{t}{WAITS_SUFFIX}`
                 WHERE lock_key LIKE ? ESCAPE '!' AND expires_at > UTC_TIMESTAMP(6)
                 ORDER BY lock_key, since_ms"
            ),
            // Waits whose process stopped renewing them.
            reap_waits: format!(
                "{g}DELETE FROM `{t}{WAITS_SUFFIX}` WHERE expires_at <= UTC_TIMESTAMP(6) LIMIT 1000"
            ),
        }
    }
}

/// MariaDB's per-statement settings: the server aborts (and rolls back) a statement that runs
/// longer than `timeout`, and the sql_mode is one the
/// statements are written for, whatever the application's session uses.
pub(crate) fn statement_guard(timeout: std::time::Duration) -> String {
    // A row-lock wait must not end first: its error (1205) is retried, the timeout's is not.
    let lock_wait = timeout.as_secs_f64().ceil() as u64 + 1;
    format!(
        "SET STATEMENT max_statement_time = {:.6}, innodb_lock_wait_timeout = {lock_wait}, \
         sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION' FOR ",
        timeout.as_secs_f64()
    )
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
        for ok in ["distributed_locks", "custom_locks", "_x", "Locks2", &"a".repeat(58)] {
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
            &"a".repeat(59),
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
