//! A fenced store: the results of workflow executions, shared by processes, that refuses a
//! write whose fencing token is lower than the highest it has accepted for that execution.
//!
//! This is the storage side of fencing. A lock holder that was paused (or cut off) past its
//! lease may still believe it holds the lock when it resumes; the lock cannot stop its next
//! write, but the store can: by then the next holder has written with a higher token, and the
//! stale write is rejected.
//!
//! Layout: one append-only file per execution in a directory (`exec-<n>`), one record a line,
//! and a marker file `exec-<n>.done` once a completion was accepted. Every write takes an
//! exclusive OS file lock (`flock`) on the execution's file, reads its records, decides, and
//! appends its own record, accepted or rejected, so the file is the whole history. The OS
//! releases the file lock when a process dies, so a killed writer never blocks the others.
//!
//! The rule, per execution: a write is accepted when its token is at least the highest
//! accepted so far (equal: the same holder writing again), and rejected otherwise.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a record writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A holder starts the execution (and reads whether it is done).
    Claim,
    /// A holder writes the execution's result: the execution is done.
    Complete,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Claim => "claim",
            Kind::Complete => "complete",
        }
    }
}

/// One write to an execution, as the store recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The writer's fencing token.
    pub(crate) token: u64,
    /// What it wrote.
    pub(crate) kind: Kind,
    /// Who wrote it (a worker id).
    pub(crate) writer: String,
    /// When the store decided, in microseconds since the Unix epoch.
    pub(crate) at_us: u64,
    /// Whether the store accepted it.
    pub(crate) accepted: bool,
}

impl Record {
    fn line(&self) -> String {
        let verdict = if self.accepted { "accepted" } else { "rejected" };
        format!("{}\t{}\t{}\t{}\t{verdict}\n", self.token, self.kind.as_str(), self.writer, self.at_us)
    }

    fn parse(line: &str) -> Option<Record> {
        let mut f = line.split('\t');
        let token = f.next()?.parse().ok()?;
        let kind = match f.next()? {
            "claim" => Kind::Claim,
            "complete" => Kind::Complete,
            _ => return None,
        };
        let writer = f.next()?.to_string();
        let at_us = f.next()?.parse().ok()?;
        let accepted = match f.next()? {
            "accepted" => true,
            "rejected" => false,
            _ => return None,
        };
        Some(Record { token, kind, writer, at_us, accepted })
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// Accepted; the execution is not done yet: run it.
    Run,
    /// Accepted, but a completion was accepted before: nothing to do.
    AlreadyDone,
    /// Rejected: a write with a higher token was accepted before.
    Stale {
        /// The highest token accepted for the execution.
        highest: u64,
    },
}

/// A fenced store in a directory (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(crate) struct FencedStore {
    dir: PathBuf,
}

impl FencedStore {
    /// The store in `dir`, created if missing.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(FencedStore { dir: dir.to_path_buf() })
    }

    fn file(&self, execution: usize) -> PathBuf {
        self.dir.join(format!("exec-{execution}"))
    }

    fn done_marker(&self, execution: usize) -> PathBuf {
        self.dir.join(format!("exec-{execution}.done"))
    }

    /// Records a claim of `execution` with `token`.
    pub(crate) fn claim(&self, execution: usize, token: u64, writer: &str) -> io::Result<Claimed> {
        let (accepted, highest, done) = self.write(execution, token, Kind::Claim, writer)?;
        Ok(match (accepted, done) {
            (false, _) => Claimed::Stale { highest },
            (true, true) => Claimed::AlreadyDone,
            (true, false) => Claimed::Run,
        })
    }

    /// Records the result of `execution` with `token`; `Ok(true)` when accepted.
    pub(crate) fn complete(&self, execution: usize, token: u64, writer: &str) -> io::Result<bool> {
        Ok(self.write(execution, token, Kind::Complete, writer)?.0)
    }

    /// Whether a completion of `execution` was accepted (without taking the file lock).
    pub(crate) fn is_done(&self, execution: usize) -> bool {
        self.done_marker(execution).exists()
    }

    /// Every record of `execution`, in the order the store decided them.
    pub(crate) fn history(&self, execution: usize) -> io::Result<Vec<Record>> {
        match File::open(self.file(execution)) {
            Ok(mut f) => {
                f.lock_shared()?;
                Ok(read(&mut f)?.0)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Decides and appends one write under the execution's file lock: whether it was
    /// accepted, the highest accepted token after it, and whether the execution was done
    /// before it.
    fn write(&self, execution: usize, token: u64, kind: Kind, writer: &str) -> io::Result<(bool, u64, bool)> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(self.file(execution))?;
        // Released when `file` is closed, also when the process dies.
        file.lock()?;
        let (records, cut_off) = read(&mut file)?;
        let highest = records.iter().filter(|r| r.accepted).map(|r| r.token).max().unwrap_or(0);
        let done = records.iter().any(|r| r.accepted && r.kind == Kind::Complete);
        let accepted = token >= highest;
        let at_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        let record = Record { token, kind, writer: writer.replace(['\t', '\n'], " "), at_us, accepted };
        let line = record.line();
        // After a line a killed writer left unfinished: start a line of our own.
        let line = if cut_off { format!("\n{line}") } else { line };
        file.write_all(line.as_bytes())?;
        if accepted && kind == Kind::Complete {
            File::create(self.done_marker(execution))?;
        }
        Ok((accepted, highest.max(if accepted { token } else { 0 }), done))
    }
}

/// The records of a file, and whether it ends in a line cut short (a writer killed
/// mid-write), which is no record.
fn read(file: &mut File) -> io::Result<(Vec<Record>, bool)> {
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let cut_off = !text.is_empty() && !text.ends_with('\n');
    Ok((text.lines().filter_map(Record::parse).collect(), cut_off))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh directory, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "distlock-fenced-store-{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_lower_token_is_rejected_an_equal_or_higher_one_accepted() {
        let dir = Scratch::new();
        let store = FencedStore::open(&dir.0).unwrap();
        assert_eq!(store.claim(1, 5, "a").unwrap(), Claimed::Run);
        assert_eq!(store.claim(1, 7, "b").unwrap(), Claimed::Run);
        assert_eq!(store.claim(1, 6, "c").unwrap(), Claimed::Stale { highest: 7 });
        assert!(!store.complete(1, 5, "a").unwrap(), "a stale completion is rejected");
        assert!(!store.is_done(1));
        assert!(store.complete(1, 7, "b").unwrap(), "the holder of the highest token writes again");
        assert!(store.is_done(1));
        assert_eq!(store.claim(1, 8, "d").unwrap(), Claimed::AlreadyDone);
        assert_eq!(store.claim(1, 7, "b").unwrap(), Claimed::Stale { highest: 8 });

        let history = store.history(1).unwrap();
        let seen: Vec<(u64, Kind, &str, bool)> =
            history.iter().map(|r| (r.token, r.kind, r.writer.as_str(), r.accepted)).collect();
        assert_eq!(
            seen,
            [
                (5, Kind::Claim, "a", true),
                (7, Kind::Claim, "b", true),
                (6, Kind::Claim, "c", false),
                (5, Kind::Complete, "a", false),
                (7, Kind::Complete, "b", true),
                (8, Kind::Claim, "d", true),
                (7, Kind::Claim, "b", false),
            ]
        );
        assert!(history.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    }

    #[test]
    fn executions_are_fenced_apart() {
        let dir = Scratch::new();
        let store = FencedStore::open(&dir.0).unwrap();
        assert_eq!(store.claim(1, 9, "a").unwrap(), Claimed::Run);
        assert_eq!(store.claim(2, 1, "b").unwrap(), Claimed::Run);
        assert!(store.complete(2, 1, "b").unwrap());
        assert!(!store.is_done(1) && store.is_done(2));
        assert!(store.history(3).unwrap().is_empty());
    }

    #[test]
    fn two_stores_on_one_directory_see_each_others_writes() {
        let dir = Scratch::new();
        let (one, two) = (FencedStore::open(&dir.0).unwrap(), FencedStore::open(&dir.0).unwrap());
        assert_eq!(one.claim(4, 3, "one").unwrap(), Claimed::Run);
        assert_eq!(two.claim(4, 4, "two").unwrap(), Claimed::Run);
        assert!(!one.complete(4, 3, "one").unwrap());
        assert!(two.complete(4, 4, "two").unwrap());
        assert!(one.is_done(4));
    }

    #[test]
    fn the_file_lock_makes_concurrent_writers_take_turns() {
        let dir = Scratch::new();
        let store = FencedStore::open(&dir.0).unwrap();
        // Eight writers with interleaved tokens: whatever the order, each decision must match
        // the records before it, which only holds if no two writers read-then-appended at once.
        std::thread::scope(|s| {
            for w in 0..8u64 {
                let store = store.clone();
                s.spawn(move || {
                    for i in 0..50u64 {
                        store.claim(0, i * 8 + w, &format!("w{w}")).unwrap();
                    }
                });
            }
        });
        let history = store.history(0).unwrap();
        assert_eq!(history.len(), 400);
        let mut highest = 0;
        for r in &history {
            assert_eq!(r.accepted, r.token >= highest, "{r:?} after highest {highest}");
            if r.accepted {
                highest = r.token;
            }
        }
    }

    #[test]
    fn a_cut_off_line_is_ignored() {
        let dir = Scratch::new();
        let store = FencedStore::open(&dir.0).unwrap();
        assert_eq!(store.claim(1, 5, "a").unwrap(), Claimed::Run);
        OpenOptions::new().append(true).open(store.file(1)).unwrap().write_all(b"9\tcompl").unwrap();
        assert_eq!(store.history(1).unwrap().len(), 1);
        assert!(store.complete(1, 5, "a").unwrap());
        let history = store.history(1).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!((history[1].token, history[1].kind, history[1].accepted), (5, Kind::Complete, true));
    }
}
