//! `--chaos`: faults injected into the worker processes of `distlock demo --processes`, and
//! what each one caused.
//!
//! About every one to two seconds the parent picks a random worker that is running and either
//! pauses it (SIGSTOP) for longer than the lock TTL, then resumes it (SIGCONT), or kills it
//! (SIGKILL) and starts a replacement. The first fault is a pause and the second a kill; after
//! that two in three are pauses. At most half of the workers are paused at once.
//!
//! A paused worker's leases run out: other workers take its executions over with higher
//! fencing tokens, and when it resumes, its writes are rejected by the fenced store. A killed
//! worker's executions are taken over once its leases expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use super::journal::{now_us, Held};
use crate::fenced_store::{Kind, Record};

/// What was done to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// SIGSTOP, then SIGCONT at `resumed_us` (`None`: not resumed yet).
    Pause {
        /// When it was resumed.
        resumed_us: Option<u64>,
    },
    /// SIGKILL; a worker with the id `replacement` was started instead.
    Kill {
        /// The replacement's worker id.
        replacement: Option<usize>,
    },
}

/// One fault.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    /// The worker's id.
    pub(crate) worker: usize,
    /// Its process id.
    pub(crate) pid: u32,
    /// When the signal was sent.
    pub(crate) at_us: u64,
    /// What was done.
    pub(crate) action: Action,
}

/// The fault injector.
#[derive(Debug)]
pub(crate) struct Chaos {
    ttl: Duration,
    next: Instant,
    /// Faults so far, in order.
    pub(crate) faults: Vec<Fault>,
    /// Paused workers: fault index and when to resume.
    paused: Vec<(usize, Instant)>,
}

/// What the parent must do after a tick.
pub(crate) enum Todo {
    /// Nothing.
    Nothing,
    /// Worker `id` was killed: start a replacement and tell [`Chaos::replaced`].
    Replace(usize),
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        // The worker may have ended by itself meanwhile; then there is nothing to signal.
        let _ = kill_process(pid, sig);
    }
}

impl Chaos {
    /// An injector for leases of `ttl`, starting in about a second.
    pub(crate) fn new(ttl: Duration) -> Self {
        Chaos {
            ttl,
            next: Instant::now() + Duration::from_millis(fastrand::u64(500..=1000)),
            faults: Vec::new(),
            paused: Vec::new(),
        }
    }

    /// Whether `worker` is paused right now.
    pub(crate) fn is_paused(&self, worker: usize) -> bool {
        self.paused.iter().any(|&(f, _)| self.faults[f].worker == worker)
    }

    /// Resumes the paused workers that are due, then, when it is time, injects the next
    /// fault into one of `running` (worker id, pid).
    pub(crate) fn tick(&mut self, running: &[(usize, u32)]) -> Todo {
        let now = Instant::now();
        let due: Vec<usize> = self.paused.iter().filter(|&&(_, at)| at <= now).map(|&(f, _)| f).collect();
        for f in due {
            self.resume(f);
        }
        let awake: Vec<(usize, u32)> = running.iter().copied().filter(|&(w, _)| !self.is_paused(w)).collect();
        if now < self.next || awake.len() < 2 {
            return Todo::Nothing;
        }
        self.next = now + Duration::from_millis(fastrand::u64(1000..=2000));
        let (worker, pid) = awake[fastrand::usize(..awake.len())];
        let pause = match self.faults.len() {
            0 => true,
            1 => false,
            _ => fastrand::u8(..3) < 2,
        };
        let at_us = now_us();
        if pause && self.paused.len() < running.len() / 2 {
            signal(pid, Signal::STOP);
            let length =
                self.ttl + Duration::from_millis(1000 + fastrand::u64(..=self.ttl.as_millis() as u64 / 2));
            self.paused.push((self.faults.len(), now + length));
            self.faults.push(Fault { worker, pid, at_us, action: Action::Pause { resumed_us: None } });
            Todo::Nothing
        } else {
            signal(pid, Signal::KILL);
            self.faults.push(Fault { worker, pid, at_us, action: Action::Kill { replacement: None } });
            Todo::Replace(worker)
        }
    }

    /// Notes the replacement of the worker killed last.
    pub(crate) fn replaced(&mut self, by: usize) {
        if let Some(Fault { action: Action::Kill { replacement }, .. }) = self.faults.last_mut() {
            *replacement = Some(by);
        }
    }

    fn resume(&mut self, fault: usize) {
        signal(self.faults[fault].pid, Signal::CONT);
        self.faults[fault].action = Action::Pause { resumed_us: Some(now_us()) };
        self.paused.retain(|&(f, _)| f != fault);
    }

    /// Resumes every paused worker (the run is over or out of time).
    pub(crate) fn resume_all(&mut self) {
        while let Some(&(f, _)) = self.paused.first() {
            self.resume(f);
        }
    }
}

/// What a fault caused, from the store's records (execution, record) and the locks the
/// worker journaled.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Effect {
    /// Locks the worker found lost (after a pause: leases that ran out while it was stopped).
    pub(crate) locks_lost: usize,
    /// The worker's writes the store rejected by fencing.
    pub(crate) rejected: usize,
    /// Executions the worker had claimed and not completed, completed by another worker.
    pub(crate) taken_over: usize,
}

/// The effect of `fault`, given when the worker's previous fault came (`since_us`: what it
/// claimed before that belongs to that one) and its next one (`until_us`: its writes after
/// that belong to the next one).
pub(crate) fn effect(
    fault: &Fault,
    (since_us, until_us): (u64, u64),
    records: &[(usize, Record)],
    held: &[Held],
) -> Effect {
    let worker = format!("worker-{}", fault.worker);
    let mine = |r: &Record| r.writer == worker;
    // Claimed before the fault (and after the previous one), with no accepted completion of
    // its own before the fault; taken over if another worker's completion was accepted after
    // the claim (one accepted before it means the claim found the execution done).
    let mut in_flight: HashMap<usize, u64> = HashMap::new();
    for (e, r) in records {
        if mine(r) && r.accepted && r.kind == Kind::Claim && (since_us..fault.at_us).contains(&r.at_us) {
            in_flight.insert(*e, r.at_us);
        }
    }
    for (e, r) in records {
        if mine(r) && r.accepted && r.kind == Kind::Complete && r.at_us < fault.at_us {
            in_flight.remove(e);
        }
    }
    let taken_over = in_flight
        .iter()
        .filter(|&(&e, &claimed)| {
            records.iter().any(|(x, r)| {
                *x == e && r.accepted && r.kind == Kind::Complete && !mine(r) && r.at_us > claimed
            })
        })
        .count();
    // A rejected result belongs to the fault its claim was in flight at; a rejected claim to
    // the fault it followed.
    let claimed_at = |e: usize, token: u64| {
        records
            .iter()
            .find(|(x, r)| *x == e && mine(r) && r.accepted && r.kind == Kind::Claim && r.token == token)
            .map(|(_, r)| r.at_us)
    };
    let rejected = records
        .iter()
        .filter(|(e, r)| {
            mine(r)
                && !r.accepted
                && match (r.kind, claimed_at(*e, r.token)) {
                    (Kind::Complete, Some(at)) => (since_us..fault.at_us).contains(&at),
                    _ => (fault.at_us..until_us).contains(&r.at_us),
                }
        })
        .count();
    let locks_lost = held
        .iter()
        .filter(|h| h.lost && (since_us..fault.at_us).contains(&h.got_us) && h.end_us >= fault.at_us)
        .count();
    Effect { locks_lost, rejected, taken_over }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: u64, kind: Kind, writer: &str, at_us: u64, accepted: bool) -> Record {
        Record { token, kind, writer: writer.into(), at_us, accepted }
    }

    #[test]
    fn a_pause_is_charged_with_the_writes_rejected_and_the_executions_taken_over() {
        let fault = Fault { worker: 1, pid: 0, at_us: 100, action: Action::Pause { resumed_us: Some(200) } };
        let records = vec![
            (1, record(5, Kind::Claim, "worker-1", 90, true)),
            (1, record(6, Kind::Claim, "worker-2", 150, true)),
            (1, record(6, Kind::Complete, "worker-2", 160, true)),
            (1, record(5, Kind::Complete, "worker-1", 210, false)),
            // Done before the pause: not taken over.
            (2, record(3, Kind::Claim, "worker-1", 10, true)),
            (2, record(3, Kind::Complete, "worker-1", 20, true)),
            // Rejected after the worker's next fault: charged to that one.
            (3, record(1, Kind::Claim, "worker-1", 400, false)),
            // Claimed before the worker's previous fault: charged to that one.
            (4, record(2, Kind::Claim, "worker-1", 5, true)),
            (4, record(3, Kind::Complete, "worker-2", 8, true)),
            // Claimed when it was done already: nothing to take over.
            (5, record(1, Kind::Complete, "worker-2", 30, true)),
            (5, record(2, Kind::Claim, "worker-1", 40, true)),
        ];
        let held = |lost, got_us, end_us| Held {
            key: "k".into(),
            template: None,
            token: 1,
            asked_us: got_us,
            got_us,
            end_us,
            lost,
        };
        let held = [held(true, 90, 210), held(false, 95, 220), held(true, 10, 20)];
        assert_eq!(
            effect(&fault, (6, 300), &records, &held),
            Effect { locks_lost: 1, rejected: 1, taken_over: 1 }
        );
    }
}
