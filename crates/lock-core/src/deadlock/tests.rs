use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn wait(owner: &str, key: &str, id: u64, at_ms: u64) -> WaitInfo {
    WaitInfo {
        key: key.into(),
        owner: owner.into(),
        id,
        since: UNIX_EPOCH + Duration::from_millis(at_ms),
        remaining_ttl: Duration::from_secs(3),
    }
}

fn graph(waits: Vec<WaitInfo>, holders: &[(&str, &str)]) -> WaitForGraph {
    let holders: HashMap<String, String> =
        holders.iter().map(|(k, h)| (k.to_string(), h.to_string())).collect();
    WaitForGraph::build(waits, |k| holders.get(k).cloned())
}

fn owners(c: &Cycle) -> Vec<(&str, &str, &str)> {
    c.edges.iter().map(|e| (e.waiter.as_str(), e.key.as_str(), e.holder.as_str())).collect()
}

#[test]
fn two_owners_waiting_for_each_other_make_one_cycle_broken_at_the_younger_wait() {
    let g = graph(
        vec![wait("bob", "a", 2, 2_000), wait("alice", "b", 1, 1_000)],
        &[("a", "alice"), ("b", "bob")],
    );
    let cycles = g.cycles();
    assert_eq!(cycles.len(), 1);
    assert_eq!(owners(&cycles[0]), vec![("alice", "b", "bob"), ("bob", "a", "alice")]);
    assert_eq!(cycles[0].victim().waiter, "bob", "bob started waiting last");
    assert_eq!(cycles[0].to_string(), "alice waits for `b` held by bob, bob waits for `a` held by alice");
}

#[test]
fn every_order_of_the_same_waits_gives_the_same_cycle_and_victim() {
    let waits = vec![
        wait("carol", "a", 3, 5_000),
        wait("alice", "b", 1, 5_000),
        wait("bob", "c", 2, 5_000),
        wait("dave", "a", 4, 1_000),
    ];
    let holders = [("a", "alice"), ("b", "bob"), ("c", "carol")];
    let first = graph(waits.clone(), &holders).cycles();
    let mut reversed = waits;
    reversed.reverse();
    let second = graph(reversed, &holders).cycles();
    assert_eq!(first, second);
    assert_eq!(
        owners(&first[0]),
        vec![("alice", "b", "bob"), ("bob", "c", "carol"), ("carol", "a", "alice")]
    );
    // Equal `since`: the largest owner name is the youngest.
    assert_eq!(first[0].victim().waiter, "carol");
}

#[test]
fn a_chain_is_no_deadlock() {
    let g = graph(vec![wait("alice", "b", 1, 0), wait("bob", "c", 2, 0)], &[("b", "bob"), ("c", "carol")]);
    assert_eq!(g.edges.len(), 2);
    assert!(g.cycles().is_empty());
}

#[test]
fn waits_for_free_or_own_keys_are_loose_not_edges() {
    let g = graph(vec![wait("alice", "free", 1, 0), wait("bob", "mine", 2, 0)], &[("mine", "bob")]);
    assert!(g.edges.is_empty());
    assert_eq!(g.loose.len(), 2);
    assert!(g.cycles().is_empty());
}

#[test]
fn separate_deadlocks_are_each_reported_and_tails_are_left_out() {
    let g = graph(
        vec![
            wait("a1", "k2", 1, 0),
            wait("a2", "k1", 2, 10),
            wait("b1", "m2", 3, 0),
            wait("b2", "m1", 4, 10),
            wait("tail", "k1", 5, 20), // waits for the cycle but is not in it
        ],
        &[("k1", "a1"), ("k2", "a2"), ("m1", "b1"), ("m2", "b2")],
    );
    let cycles = g.cycles();
    assert_eq!(cycles.len(), 2);
    assert_eq!(cycles[0].victim().waiter, "a2");
    assert_eq!(cycles[1].victim().waiter, "b2");
    assert!(cycles.iter().all(|c| c.edges.iter().all(|e| e.waiter != "tail")));
}

#[test]
fn a_component_with_several_cycles_yields_its_shortest_from_the_smallest_owner() {
    // alice -> bob -> alice and alice -> bob -> carol -> alice.
    let g = graph(
        vec![
            wait("alice", "b", 1, 0),
            wait("bob", "a", 2, 0),
            wait("bob", "c", 3, 0),
            wait("carol", "a2", 4, 0),
        ],
        &[("a", "alice"), ("a2", "alice"), ("b", "bob"), ("c", "carol")],
    );
    let cycles = g.cycles();
    assert_eq!(cycles.len(), 1);
    assert_eq!(owners(&cycles[0]), vec![("alice", "b", "bob"), ("bob", "a", "alice")]);
}

#[test]
fn config_validates_its_interval_and_derives_the_wait_ttl() {
    let c = DeadlockConfig::default();
    assert!(c.enabled);
    assert_eq!(c.policy, DeadlockPolicy::Report);
    assert_eq!(c.wait_ttl(), Duration::from_secs(3));
    let slow = DeadlockConfig { interval: Duration::from_secs(5), ..c.clone() };
    assert_eq!(slow.wait_ttl(), Duration::from_secs(15));
    assert!(DeadlockConfig { interval: Duration::ZERO, ..c }.validate().is_err());
}

#[test]
fn a_wait_reports_how_long_it_lasted() {
    let w = WaitInfo { since: SystemTime::now() - Duration::from_secs(5), ..wait("o", "k", 1, 0) };
    assert!(w.waited() >= Duration::from_secs(5));
    let future = WaitInfo { since: SystemTime::now() + Duration::from_secs(60), ..w };
    assert_eq!(future.waited(), Duration::ZERO);
}
