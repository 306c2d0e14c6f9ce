//! What a worker process of `distlock demo --processes` observed, written as it happens to a
//! file of its own (one line an event, flushed at once, so a killed worker's lines up to its
//! end survive) and read back by the parent.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: one clock for every process on the machine.
pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

/// One lock a worker held, written when it let go of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// The lock key.
    pub(crate) key: String,
    /// The template, for a template slot.
    pub(crate) template: Option<usize>,
    /// Its fencing token.
    pub(crate) token: u64,
    /// When the lock call was made.
    pub(crate) asked_us: u64,
    /// When it returned with the lock.
    pub(crate) got_us: u64,
    /// When the worker stopped relying on it (just before the unlock call).
    pub(crate) end_us: u64,
    /// Whether the lease was lost meanwhile (`lost()` fired, or the unlock found the lock
    /// gone or somebody else's).
    pub(crate) lost: bool,
}

/// One line of a worker's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A lock held and let go of.
    Held(Held),
    /// A lock operation failed.
    Error(String),
    /// The worker's counters, written when it ends normally.
    Counts {
        /// Offers skipped because another worker held the execution.
        busy: u64,
        /// Offers skipped because the store had the execution done.
        done: u64,
    },
}

impl Event {
    fn line(&self) -> String {
        match self {
            Event::Held(h) => format!(
                "held\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                h.key.replace(['\t', '\n'], " "),
                h.template.map_or("-".to_string(), |t| t.to_string()),
                h.token,
                h.asked_us,
                h.got_us,
                h.end_us,
                u8::from(h.lost)
            ),
            Event::Error(e) => format!("error\t{}\n", e.replace(['\t', '\n'], " ")),
            Event::Counts { busy, done } => format!("counts\t{busy}\t{done}\n"),
        }
    }

    fn parse(line: &str) -> Option<Event> {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["held", key, template, token, asked, got, end, lost] => Some(Event::Held(Held {
                key: key.to_string(),
                template: template.parse().ok(),
                token: token.parse().ok()?,
                asked_us: asked.parse().ok()?,
                got_us: got.parse().ok()?,
                end_us: end.parse().ok()?,
                lost: *lost == "1",
            })),
            ["error", what] => Some(Event::Error(what.to_string())),
            ["counts", busy, done] => {
                Some(Event::Counts { busy: busy.parse().ok()?, done: done.parse().ok()? })
            }
            _ => None,
        }
    }
}

/// The journal file of worker `id` in `dir`.
pub(crate) fn path(dir: &Path, id: usize) -> PathBuf {
    dir.join(format!("worker-{id}.journal"))
}

/// A worker's journal, shared by its tasks.
#[derive(Debug)]
pub(crate) struct Journal(Mutex<File>);

impl Journal {
    /// Creates worker `id`'s journal in `dir`.
    pub(crate) fn create(dir: &Path, id: usize) -> io::Result<Self> {
        Ok(Journal(Mutex::new(File::create(path(dir, id))?)))
    }

    /// Appends `event` (one write call: a line is whole or, if the worker is killed during
    /// it, cut short and skipped when read).
    pub(crate) fn write(&self, event: &Event) {
        let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(event.line().as_bytes()) {
            eprintln!("distlock demo worker: writing the journal: {e}");
        }
    }
}

/// The events of worker `id`'s journal in `dir` (none if it never wrote one).
pub(crate) fn read(dir: &Path, id: usize) -> Vec<Event> {
    std::fs::read_to_string(path(dir, id)).unwrap_or_default().lines().filter_map(Event::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_as_written_and_a_cut_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!(
            "distlock-journal-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let events = [
            Event::Held(Held {
                key: "p:execution:exec-1".into(),
                template: None,
                token: 7,
                asked_us: 1,
                got_us: 2,
                end_us: 3,
                lost: false,
            }),
            Event::Held(Held {
                key: "p:template:tpl-0:slot:1".into(),
                template: Some(0),
                token: 9,
                asked_us: 4,
                got_us: 5,
                end_us: 6,
                lost: true,
            }),
            Event::Error("unlock\tfailed\nbadly".into()),
            Event::Counts { busy: 10, done: 11 },
        ];
        let journal = Journal::create(&dir, 3).unwrap();
        for e in &events {
            journal.write(e);
        }
        journal.0.lock().unwrap().write_all(b"held\tcut").unwrap();
        let read = read(&dir, 3);
        assert_eq!(&read[..2], &events[..2]);
        assert_eq!(read[2], Event::Error("unlock failed badly".into()));
        assert_eq!(read[3], events[3]);
        assert_eq!(read.len(), 4);
        assert!(super::read(&dir, 4).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
