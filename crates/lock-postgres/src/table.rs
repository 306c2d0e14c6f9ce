//! The lock table: its validated name (and schema), its schema and every statement run
//! against it.
//!
//! The schema and table names are the only text ever spliced into SQL, and only after
//! [`TableName::new`] accepted them as plain identifiers; every value is a bound parameter.

use lock_core::{LockError, Result};

/// Default table name.
pub const DEFAULT_TABLE: &str = "distributed_locks";

/// Default schema.
pub const DEFAULT_SCHEMA: &str = "public";

/// Longest accepted table name: PostgreSQL's identifier limit (63 bytes) less the `_waits` of
/// the table beside it that holds the published waits.
pub const MAX_TABLE_NAME_LEN: usize = 63 - WAITS_SUFFIX.len();

/// Longest accepted schema name: PostgreSQL's identifier limit.
pub const MAX_SCHEMA_NAME_LEN: usize = 63;

/// The waits table is named after the lock table with this suffix.
pub const WAITS_SUFFIX: &str = "_waits";

/// The id sequence is named after the lock table with this suffix.
pub const IDS_SUFFIX: &str = "_ids";

/// Bits of the fencing token that count acquisitions of one row (the rest is the row's id).
pub(crate) const GENERATION_BITS: u32 = 16;
/// A row is reaped only while its generation is below this: then its last token,
/// `(id << 16) + generation`, is below `(id + 1) << 16`, so the next row of the key, whose id
/// is larger, starts above every token the key ever had.
pub(crate) const REAPABLE_GENERATIONS: u64 = 1 << GENERATION_BITS;

/// Length of a provider's tag in wake-up payloads (hex digits).
pub(crate) const TAG_LEN: usize = 16;

/// `last_op` codes written by the acquire statement and returned by it.
pub(crate) mod op {
    /// The owner re-entered its live lock.
    pub(crate) const REENTERED: i16 = 0;
    /// A released row was taken.
    pub(crate) const TOOK_RELEASED: i16 = 1;
    /// An expired lease was taken over (lazy cleanup).
    pub(crate) const TOOK_EXPIRED: i16 = 2;
    /// Held by another owner.
    pub(crate) const BUSY: i16 = 3;
    /// A new row.
    pub(crate) const INSERTED: i16 = 4;
}

/// A schema and table name that are safe to splice into SQL: ASCII letters, digits and `_`,
/// not starting with a digit, the table at most [`MAX_TABLE_NAME_LEN`] bytes, the schema at
/// most [`MAX_SCHEMA_NAME_LEN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: String,
    table: String,
}

fn identifier(what: &'static str, name: &str, limit: usize) -> Result<()> {
    let why = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > limit {
        Some(format!("is {} bytes long; the limit is {limit}", name.len()))
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("must not start with a digit".to_string())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map(|c| format!("contains {c:?}; only ASCII letters, digits and '_' are allowed"))
    };
    match why {
        Some(why) => Err(LockError::invalid(what, format!("`{}`: {why}", name.escape_debug()))),
        None => Ok(()),
    }
}

impl TableName {
    /// Validates `schema` and `table`; anything else is an
    /// [`InvalidArgument`](LockError::InvalidArgument) naming `schema` or `table name`.
    pub fn new(schema: &str, table: &str) -> Result<Self> {
        identifier("table name", table, MAX_TABLE_NAME_LEN)?;
        identifier("schema", schema, MAX_SCHEMA_NAME_LEN)?;
        Ok(TableName { schema: schema.to_string(), table: table.to_string() })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The LISTEN/NOTIFY channel of releases: the table's name (channels are per database,
    /// so tables of one name in two schemas share it: their waiters only wake more often).
    pub fn channel(&self) -> &str {
        &self.table
    }

    /// `"schema"."table<suffix>"`.
    fn qualified(&self, suffix: &str) -> String {
        format!("\"{}\".\"{}{suffix}\"", self.schema, self.table)
    }
}

/// Every statement, rendered once for one table.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) create: Vec<String>,
    pub(crate) acquire: String,
    pub(crate) take: String,
    pub(crate) free: String,
    pub(crate) hand: String,
    pub(crate) unlock: String,
    pub(crate) undo: String,
    pub(crate) refresh: String,
    pub(crate) holder: String,
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

/// Microseconds from `a` to `b` (timestamps), as BIGINT.
fn micros_between(a: &str, b: &str) -> String {
    format!("(EXTRACT(EPOCH FROM ({b} - {a})) * 1000000)::BIGINT")
}

impl Statements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table.qualified("");
        let w = table.qualified(WAITS_SUFFIX);
        let ids = table.qualified(IDS_SUFFIX);
        let left = micros_between("clock_timestamp()", "expires_at");
        let held = micros_between("acquired_at", "clock_timestamp()");
        let info = format!("lock_key, owner, {TOKEN}, depth, {left}, {held}");
        // Whether the row, as it was, holds a live lock; `excluded.acquired_at` is the
        // statement's one reading of the server clock.
        let live = "l.depth > 0 AND l.expires_at > excluded.acquired_at";
        // A release's wake-up: on the channel, a payload of the next waiter's provider tag,
        // the releasing provider's tag ($3) and the key. Only when the lock became free and
        // the next waiter waits in another provider (the releasing one wakes its own).
        // `tag` is the parameter that holds the releasing provider's tag.
        let notify = |depth: &str, tag: &str| {
            format!(
                "CASE WHEN {depth} = 0 AND waiter NOT IN ('', {tag})
                     THEN pg_notify('{chan}', waiter || {tag} || lock_key) END IS NULL",
                chan = table.channel()
            )
        };
        // Another provider the row knows to wait for the key, besides the acquiring one ($4).
        let other = "CASE WHEN l.waiter NOT IN ('', $4) THEN l.waiter \
                          WHEN l.other_waiter NOT IN ('', $4) THEN l.other_waiter ELSE '' END";
        Statements {
            // One row per key in use. A release keeps the row (free: depth 0, no owner), so
            // that the key's last fencing token stays; the reaper deletes rows that have been
            // free for the grace period. Keys and owners compare byte for byte (`C`). Pages
            // are filled to half, so that the new version of an updated row finds room on its
            // own page (a HOT update: no index entry, less WAL).
            create: vec![
                format!("CREATE SEQUENCE IF NOT EXISTS {ids}"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        lock_key TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,
                        id BIGINT NOT NULL,
                        generation BIGINT NOT NULL DEFAULT 0,
                        owner TEXT COLLATE \"C\" NOT NULL,
                        depth INTEGER NOT NULL,
                        last_op SMALLINT NOT NULL,
                        waiter TEXT NOT NULL DEFAULT '',
                        other_waiter TEXT NOT NULL DEFAULT '',
                        acquired_at TIMESTAMPTZ NOT NULL,
                        expires_at TIMESTAMPTZ NOT NULL
                    ) WITH (fillfactor = 50)"
                ),
            ],
            // One statement decides and acts, for every acquisition. A key without a row gets
            // one (token `id << 16`, the id drawn from the sequence). Otherwise, under the row
            // lock, the row as it was (`l`, every SET reads the old values) decides: re-entry
            // of the owner's live lock, take-over of a released or expired row (generation + 1:
            // the token follows the key's previous token), or busy.
            //
            // `waiter` names the provider whose waiter the next release wakes, `other_waiter`
            // a second provider known to wait. A busy attempt enters its provider ($4); a
            // take-over hands the turn to the other provider if one waits (so two processes
            // take turns), keeping its own provider in line if it has more waiters ($5). A
            // busy attempt that will not wait (`try_lock`: $6 false) leaves both as they are,
            // so that no release wakes, or keeps its short path from, a provider nobody waits in.
            // Parameters: key, owner, ttl µs, tag, more local waiters (bool), enlist (bool).
            acquire: format!(
                "INSERT INTO {t} AS l (lock_key, id, generation, owner, depth, last_op, waiter, other_waiter,
                                        acquired_at, expires_at)
                 VALUES ($1, nextval('{ids_lit}'), 0, $2, 1, {inserted}, CASE WHEN $5 THEN $4 ELSE '' END, '',
                         clock_timestamp(), clock_timestamp() + $3 * INTERVAL '1 microsecond')
                 ON CONFLICT (lock_key) DO UPDATE SET
                   last_op = CASE WHEN {live} AND l.owner = excluded.owner THEN {reentered}
                                  WHEN {live} THEN {busy}
                                  WHEN l.depth = 0 THEN {released} ELSE {expired} END,
                   depth = CASE WHEN {live} AND l.owner = excluded.owner THEN l.depth + 1
                                WHEN {live} THEN l.depth ELSE 1 END,
                   generation = CASE WHEN {live} THEN l.generation ELSE l.generation + 1 END,
                   owner = CASE WHEN {live} THEN l.owner ELSE excluded.owner END,
                   acquired_at = CASE WHEN {live} THEN l.acquired_at ELSE excluded.acquired_at END,
                   expires_at = CASE WHEN {live} AND l.owner = excluded.owner
                                         THEN GREATEST(l.expires_at, excluded.expires_at)
                                     WHEN {live} THEN l.expires_at ELSE excluded.expires_at END,
                   waiter = CASE WHEN {live} AND l.owner = excluded.owner THEN l.waiter
                                 WHEN {live} AND $6 AND l.waiter IN ('', $4) THEN $4
                                 WHEN {live} THEN l.waiter
                                 WHEN ({other}) <> '' THEN ({other})
                                 WHEN $5 THEN $4 ELSE '' END,
                   other_waiter = CASE WHEN {live} AND l.owner = excluded.owner THEN l.other_waiter
                                       WHEN {live} AND NOT $6 THEN l.other_waiter
                                       WHEN {live} AND l.waiter IN ('', $4)
                                           THEN CASE WHEN l.other_waiter = $4 THEN '' ELSE l.other_waiter END
                                       WHEN {live} THEN $4
                                       WHEN ({other}) <> '' AND $5 THEN $4
                                       WHEN ({other}) = l.waiter AND l.other_waiter NOT IN ('', $4)
                                           THEN l.other_waiter
                                       ELSE '' END
                 RETURNING {TOKEN}, depth, last_op, owner, {left}",
                ids_lit = ids.replace('\'', "''"),
                inserted = op::INSERTED,
                reentered = op::REENTERED,
                busy = op::BUSY,
                released = op::TOOK_RELEASED,
                expired = op::TOOK_EXPIRED,
            ),
            // The short path of an acquisition of a key this provider freed (see `rows`): take
            // the row if it still has the token it had when freed ($4: nobody acquired it
            // since, as every acquisition adds one to the generation), is free and names no
            // waiting provider, as the acquire statement would with no other waiter of this
            // provider ($5 false). No `RETURNING`: one row changed means the new token is $4 + 1.
            // Parameters: key, owner, ttl µs, token.
            take: format!(
                "UPDATE {t} SET generation = generation + 1, owner = $2, depth = 1,
                        acquired_at = clock_timestamp(),
                        expires_at = clock_timestamp() + $3 * INTERVAL '1 microsecond'
                 WHERE lock_key = $1 AND {TOKEN} = $4 AND depth = 0
                   AND waiter = '' AND other_waiter = ''"
            ),
            // The short path of a release: the last level of a live lock whose row names no
            // waiting provider, marked free as the release below would. No `RETURNING`: one
            // row changed means the lock is free and nobody is to be woken. Parameters: key,
            // owner.
            free: format!(
                "UPDATE {t} SET depth = 0, owner = '', expires_at = clock_timestamp()
                 WHERE lock_key = $1 AND owner = $2 AND depth = 1 AND expires_at > clock_timestamp()
                   AND waiter = ''"
            ),
            // The release of the last level of the releasing owner's lock (with the token it
            // has: $3) while a call of this provider waits for the key ($4, with its TTL $5).
            // When no other provider is named as waiting, the lock becomes the waiter's, one
            // more generation on, as the waiter's own take-over would make it, and the row keeps
            // naming this provider if more of its calls wait ($6). Otherwise (so that two
            // providers still take turns) it is the plain release: the row free, its waiter
            // kept and woken as the release below would. Either way one statement; `RETURNING`
            // tells which (an owner: handed over, the waiter's token $3 + 1) and the waiter.
            // Parameters: key, owner, token, new owner, ttl µs, more local waiters (bool), tag.
            hand: {
                let mine = "(waiter IN ('', $7) AND other_waiter IN ('', $7))";
                format!(
                    "UPDATE {t} SET generation = CASE WHEN {mine} THEN generation + 1 ELSE generation END,
                            owner = CASE WHEN {mine} THEN $4 ELSE '' END,
                            depth = CASE WHEN {mine} THEN 1 ELSE 0 END,
                            acquired_at = CASE WHEN {mine} THEN clock_timestamp() ELSE acquired_at END,
                            expires_at = CASE WHEN {mine} THEN clock_timestamp() + $5 * INTERVAL '1 microsecond'
                                              ELSE clock_timestamp() END,
                            waiter = CASE WHEN NOT {mine} THEN waiter WHEN $6 THEN $7 ELSE '' END,
                            other_waiter = CASE WHEN {mine} THEN '' ELSE other_waiter END
                     WHERE lock_key = $1 AND owner = $2 AND {TOKEN} = $3 AND depth = 1
                       AND expires_at > clock_timestamp()
                     RETURNING owner <> '', waiter, {}",
                    notify("depth", "$7")
                )
            },
            // Release one level, owner-checked, in one statement: count the depth down, and at
            // zero mark the row free (no owner, expired now) without deleting it, so the key's
            // token stays, and wake the next waiter's provider. Parameters: key, owner, tag.
            unlock: format!(
                "UPDATE {t} SET depth = depth - 1,
                        owner = CASE WHEN depth = 1 THEN '' ELSE owner END,
                        expires_at = CASE WHEN depth = 1 THEN clock_timestamp() ELSE expires_at END
                 WHERE lock_key = $1 AND owner = $2 AND depth > 0 AND expires_at > clock_timestamp()
                 RETURNING depth, waiter, {}",
                notify("depth", "$3")
            ),
            // The same for exactly one acquisition (owner and token): undoes a lock whose
            // caller went away, never a later acquisition of the key. Parameters: key, owner,
            // tag, token.
            undo: format!(
                "UPDATE {t} SET depth = depth - 1,
                        owner = CASE WHEN depth = 1 THEN '' ELSE owner END,
                        expires_at = CASE WHEN depth = 1 THEN clock_timestamp() ELSE expires_at END
                 WHERE lock_key = $1 AND owner = $2 AND {TOKEN} = $4 AND depth > 0
                   AND expires_at > clock_timestamp()
                 RETURNING depth, waiter, {}",
                notify("depth", "$3")
            ),
            // Parameters: ttl µs, key, owner.
            refresh: format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + $1 * INTERVAL '1 microsecond'
                 WHERE lock_key = $2 AND owner = $3 AND depth > 0 AND expires_at > clock_timestamp()
                 RETURNING {TOKEN}, depth"
            ),
            holder: format!(
                "SELECT owner, depth > 0 AND expires_at > clock_timestamp() FROM {t} WHERE lock_key = $1"
            ),
            inspect: format!(
                "SELECT {info} FROM {t} WHERE lock_key = $1 AND depth > 0 AND expires_at > clock_timestamp()"
            ),
            list: format!(
                "SELECT {info} FROM {t}
                 WHERE starts_with(lock_key, $1) AND depth > 0 AND expires_at > clock_timestamp()
                 ORDER BY lock_key"
            ),
            // Rows free (released or expired) for more than `grace`, whose generation still
            // lets the key's next row start above every token it had. Returns whether each
            // deleted row ended by expiry (its owner never released it).
            reap: format!(
                "DELETE FROM {t} WHERE lock_key IN (
                     SELECT lock_key FROM {t}
                     WHERE expires_at <= clock_timestamp() - $1 * INTERVAL '1 microsecond'
                       AND generation < {REAPABLE_GENERATIONS}
                     LIMIT 1000 FOR UPDATE SKIP LOCKED)
                   AND expires_at <= clock_timestamp() - $1 * INTERVAL '1 microsecond'
                 RETURNING owner <> ''"
            ),
            // Published waits (deadlock detection), beside the locks and never read by a lock
            // statement: one row per waiting call, living until `expires_at` unless renewed.
            create_waits: format!(
                "CREATE TABLE IF NOT EXISTS {w} (
                    lock_key TEXT COLLATE \"C\" NOT NULL,
                    owner TEXT COLLATE \"C\" NOT NULL,
                    wait_id BIGINT NOT NULL,
                    since_ms BIGINT NOT NULL,
                    expires_at TIMESTAMPTZ NOT NULL,
                    PRIMARY KEY (lock_key, owner, wait_id)
                )"
            ),
            // Parameters: key, owner, id, since (ms since the epoch), ttl µs.
            post_wait: format!(
                "INSERT INTO {w} (lock_key, owner, wait_id, since_ms, expires_at)
                 VALUES ($1, $2, $3, $4, clock_timestamp() + $5 * INTERVAL '1 microsecond')
                 ON CONFLICT (lock_key, owner, wait_id) DO UPDATE SET expires_at = excluded.expires_at"
            ),
            drop_wait: format!("DELETE FROM {w} WHERE lock_key = $1 AND owner = $2 AND wait_id = $3"),
            list_waits: format!(
                "SELECT lock_key, owner, wait_id, since_ms, {left} FROM {w}
                 WHERE starts_with(lock_key, $1) AND expires_at > clock_timestamp()
                 ORDER BY lock_key, since_ms"
            ),
            // Waits whose process stopped renewing them.
            reap_waits: format!(
                "DELETE FROM {w} WHERE ctid IN (
                     SELECT ctid FROM {w} WHERE expires_at <= clock_timestamp() LIMIT 1000)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["distributed_locks", "custom_locks", "_x", "Locks2", &"a".repeat(MAX_TABLE_NAME_LEN)] {
            assert_eq!(TableName::new("public", ok).unwrap().table(), ok);
        }
        assert_eq!(TableName::new(&"s".repeat(63), "t").unwrap().schema().len(), 63);
    }

    #[test]
    fn rejects_anything_that_could_escape_the_identifier() {
        for bad in [
            "",
            "locks; DROP TABLE x",
            "lo\"cks",
            "locks\"; DROP TABLE x; --",
            "db.locks",
            "1locks",
            "locks ",
            "lôcks",
            "locks\0",
            "lo'cks",
            &"a".repeat(MAX_TABLE_NAME_LEN + 1),
        ] {
            match TableName::new("public", bad) {
                Err(LockError::InvalidArgument { what: "table name", .. }) => {}
                other => panic!("{bad:?} -> {other:?}"),
            }
            if bad.len() <= MAX_TABLE_NAME_LEN {
                match TableName::new(bad, "locks") {
                    Err(LockError::InvalidArgument { what: "schema", .. }) => {}
                    other => panic!("schema {bad:?} -> {other:?}"),
                }
            }
        }
    }
}
