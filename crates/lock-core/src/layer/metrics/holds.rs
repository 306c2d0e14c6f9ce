//! The locks held through the metrics layer: depth, start and class of each hold, and per
//! class the holds in the order they started, so that the oldest is always at hand.
//!
//! Every operation is O(1) (one hash lookup by key) and, once the maps and lists have grown
//! to the largest number of holds seen, allocates nothing: a key held by one owner (the
//! common case) is stored inline, and each class keeps its holds in a doubly linked list in a
//! slab, oldest first, whose freed slots are reused.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::handles::ClassHandles;

/// No slot.
const NIL: u32 = u32::MAX;

/// One hold: a (key, owner) held through the layer.
#[derive(Debug)]
struct Held {
    /// When the hold began, for its hold time.
    since: Instant,
    depth: u32,
    class: Arc<ClassHandles>,
    /// Its node in its class's list.
    slot: u32,
}

/// The holds of one key: nearly always a single owner.
#[derive(Debug)]
enum Holders {
    One(Arc<str>, Held),
    Many(Vec<(Arc<str>, Held)>),
}

impl Holders {
    fn get_mut(&mut self, owner: &str) -> Option<&mut Held> {
        match self {
            Holders::One(o, h) => (**o == *owner).then_some(h),
            Holders::Many(v) => v.iter_mut().find(|(o, _)| **o == *owner).map(|(_, h)| h),
        }
    }
}

/// A node of a class's list: a hold's start, linked to the holds started just before and after.
#[derive(Debug, Clone, Copy)]
struct Node {
    since: Instant,
    prev: u32,
    next: u32,
}

/// The holds of one class, oldest first.
#[derive(Debug, Default)]
struct HoldList {
    nodes: Vec<Node>,
    head: u32,
    tail: u32,
    /// Freed nodes, linked by `next`.
    free: u32,
}

impl HoldList {
    fn new() -> Self {
        HoldList { nodes: Vec::new(), head: NIL, tail: NIL, free: NIL }
    }

    /// Appends a hold started at `since` (the newest); returns its slot.
    fn push(&mut self, since: Instant) -> u32 {
        let node = Node { since, prev: self.tail, next: NIL };
        let slot = if self.free == NIL {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        } else {
            let slot = self.free;
            self.free = self.nodes[slot as usize].next;
            self.nodes[slot as usize] = node;
            slot
        };
        match self.tail {
            NIL => self.head = slot,
            tail => self.nodes[tail as usize].next = slot,
        }
        self.tail = slot;
        slot
    }

    /// Unlinks `slot`; returns whether it was the oldest.
    fn remove(&mut self, slot: u32) -> bool {
        let Node { prev, next, .. } = self.nodes[slot as usize];
        match prev {
            NIL => self.head = next,
            prev => self.nodes[prev as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.nodes[next as usize].prev = prev,
        }
        self.nodes[slot as usize].next = self.free;
        self.free = slot;
        prev == NIL
    }

    /// The start of the oldest hold, if any.
    fn oldest(&self) -> Option<Instant> {
        (self.head != NIL).then(|| self.nodes[self.head as usize].since)
    }
}

/// What the layer knows of the locks held through it. Gauges are set here, with the holds
/// locked, so that each gauge's last value is the latest state.
#[derive(Debug, Default)]
pub(super) struct Holds {
    by_key: HashMap<Arc<str>, Holders, foldhash::fast::RandomState>,
    /// Per class (by [`ClassHandles::index`]), its holds oldest first.
    lists: Vec<HoldList>,
}

impl Holds {
    /// Notes an acquisition of `key` by `owner` at `depth`, granted at `now`: a new hold at
    /// depth 1, a deeper level otherwise.
    pub(super) fn acquired(
        &mut self,
        key: &Arc<str>,
        owner: &Arc<str>,
        depth: u32,
        class: &Arc<ClassHandles>,
        now: Instant,
    ) {
        let lists = &mut self.lists;
        let holders = match self.by_key.entry(key.clone()) {
            Entry::Vacant(e) => {
                e.insert(Holders::One(owner.clone(), start(lists, class, depth, now)));
                return;
            }
            Entry::Occupied(e) => e.into_mut(),
        };
        let Some(h) = holders.get_mut(owner) else {
            let held = start(lists, class, depth, now);
            match holders {
                Holders::Many(v) => v.push((owner.clone(), held)),
                Holders::One(..) => {
                    let Holders::One(first, first_held) =
                        std::mem::replace(holders, Holders::Many(Vec::new()))
                    else {
                        unreachable!("matched as One")
                    };
                    *holders = Holders::Many(vec![(first, first_held), (owner.clone(), held)]);
                }
            }
            return;
        };
        h.depth = depth;
        if depth > 1 {
            return;
        }
        // The previous hold ended unseen (it expired): a new one starts, with no sample.
        end(lists, &h.class, h.slot, now);
        *h = start(lists, class, depth, now);
    }

    /// Notes a successful unlock: one level less; the hold ends with its last level.
    pub(super) fn released(&mut self, key: &str, owner: &str) {
        let Some(h) = self.by_key.get_mut(key).and_then(|hs| hs.get_mut(owner)) else { return };
        h.depth = h.depth.saturating_sub(1);
        if h.depth == 0 {
            self.ended(key, owner, true);
        }
    }

    /// Notes the depth a refresh reported.
    pub(super) fn refreshed(&mut self, key: &str, owner: &str, depth: u32) {
        if let Some(h) = self.by_key.get_mut(key).and_then(|hs| hs.get_mut(owner)) {
            h.depth = depth;
        }
    }

    /// Stops tracking (key, owner). With `timed`, the hold ended now and its time is recorded.
    pub(super) fn ended(&mut self, key: &str, owner: &str, timed: bool) {
        let Some(holders) = self.by_key.get_mut(key) else { return };
        let held = match holders {
            Holders::One(o, _) if **o == *owner => {
                let Some(Holders::One(_, h)) = self.by_key.remove(key) else { unreachable!() };
                h
            }
            Holders::One(..) => return,
            Holders::Many(v) => {
                let Some(i) = v.iter().position(|(o, _)| **o == *owner) else { return };
                let (_, h) = v.swap_remove(i);
                if v.len() == 1 {
                    let (o, last) = v.pop().expect("one left");
                    *holders = Holders::One(o, last);
                }
                h
            }
        };
        let now = Instant::now();
        end(&mut self.lists, &held.class, held.slot, now);
        if timed {
            held.class.hold.record(now.saturating_duration_since(held.since).as_secs_f64());
        }
    }

    /// Stops tracking every hold (the provider closed): off the held gauges, no samples, the
    /// oldest-hold gauge of every class that held any at 0.
    pub(super) fn clear(&mut self) {
        let end = |h: Held| {
            h.class.held.decrement(1.0);
            h.class.oldest.set(0.0);
        };
        for (_, holders) in self.by_key.drain() {
            match holders {
                Holders::One(_, h) => end(h),
                Holders::Many(v) => v.into_iter().for_each(|(_, h)| end(h)),
            }
        }
        self.lists.clear();
    }
}

/// `class`'s list of holds.
fn list<'l>(lists: &'l mut Vec<HoldList>, class: &ClassHandles) -> &'l mut HoldList {
    if lists.len() <= class.index {
        lists.resize_with(class.index + 1, HoldList::new);
    }
    &mut lists[class.index]
}

/// A new hold of `class` at `depth`, started `now`: on the held gauge, at the end of the
/// class's list (setting the oldest-hold gauge if it is the class's only hold).
fn start(lists: &mut Vec<HoldList>, class: &Arc<ClassHandles>, depth: u32, now: Instant) -> Held {
    class.held.increment(1.0);
    let list = list(lists, class);
    let slot = list.push(now);
    if list.head == slot {
        class.oldest.set(wall_clock().as_secs_f64());
    }
    Held { since: now, depth, class: class.clone(), slot }
}

/// The end of the hold of `class` in `slot`, seen `now`: off the held gauge and the class's
/// list (setting the oldest-hold gauge if it was the oldest).
fn end(lists: &mut Vec<HoldList>, class: &ClassHandles, slot: u32, now: Instant) {
    class.held.decrement(1.0);
    let list = list(lists, class);
    if list.remove(slot) {
        let oldest = match list.oldest() {
            // `now` was read a while ago: the two clocks are read together here, so that the
            // wall time of the start does not drift by the time since.
            Some(since) => {
                let (wall, mono) = (wall_clock(), Instant::now());
                wall.saturating_sub(mono.max(now).saturating_duration_since(since)).as_secs_f64()
            }
            None => 0.0,
        };
        class.oldest.set(oldest);
    }
}

/// The wall clock as a duration since the Unix epoch.
pub(super) fn wall_clock() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The starts of `list`, oldest first.
    fn starts(list: &HoldList, base: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = list.head;
        while at != NIL {
            out.push(list.nodes[at as usize].since.duration_since(base).as_secs());
            at = list.nodes[at as usize].next;
        }
        out
    }

    #[test]
    fn a_hold_list_keeps_the_oldest_first_and_reuses_freed_slots() {
        let base = Instant::now();
        let at = |s: u64| base + Duration::from_secs(s);
        let mut list = HoldList::new();
        assert_eq!(list.oldest(), None);
        let slots: Vec<u32> = (1..=4).map(|s| list.push(at(s))).collect();
        assert_eq!(starts(&list, base), [1, 2, 3, 4]);

        assert!(!list.remove(slots[2]), "a younger hold is not the oldest");
        assert!(list.remove(slots[0]), "the oldest");
        assert_eq!(list.oldest(), Some(at(2)));
        assert_eq!(starts(&list, base), [2, 4]);

        // Freed slots are reused, the newest at the end.
        let five = list.push(at(5));
        let six = list.push(at(6));
        assert!([slots[0], slots[2]].contains(&five) && [slots[0], slots[2]].contains(&six));
        assert_eq!(list.nodes.len(), 4);
        assert_eq!(starts(&list, base), [2, 4, 5, 6]);

        assert!(!list.remove(six), "the newest");
        assert_eq!(list.tail, five);
        for slot in [slots[1], slots[3], five] {
            assert!(list.remove(slot));
        }
        assert_eq!((list.oldest(), list.head, list.tail), (None, NIL, NIL));
        assert_eq!(list.push(at(7)), list.head);
    }
}
