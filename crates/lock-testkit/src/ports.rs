//! Loopback ports for the servers a test starts itself.
//!
//! Binding `127.0.0.1:0` and handing out the port the kernel chose is not enough for a server
//! that starts later: that port comes from the kernel's ephemeral range, the same range every
//! outgoing connection of the test run draws its local port from, and a busy run makes
//! thousands. Between the probe and the server's own `bind`, a client connection may take the
//! port (`Address already in use`), and a server that is stopped and restarted on its port
//! may lose it the same way. [`free_port`] therefore picks below the ephemeral range (read
//! from `/proc/sys/net/ipv4/ip_local_port_range`), where the kernel never hands out a port on
//! its own, and never gives the same port twice in one process, so a stopped server's port
//! stays its own until the process ends.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port handed out; below it live well-known services (and this machine's own
/// MariaDB, Redis, PostgreSQL and etcd).
const LOWEST: u16 = 10_000;

/// Where the kernel's ephemeral range starts when `/proc` does not say (Linux's default).
const EPHEMERAL_DEFAULT: u16 = 32_768;

/// Ports this process handed out already.
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port of 127.0.0.1 that is free now, lies outside the kernel's ephemeral range, and was
/// not handed out before in this process. `Err` only when none is found in many tries.
pub fn free_port() -> Result<u16, String> {
    let highest = ephemeral_start().saturating_sub(1);
    if highest <= LOWEST {
        // No room below the ephemeral range: fall back to the kernel's choice.
        return kernel_port();
    }
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1_000 {
        let port = fastrand::u16(LOWEST..=highest);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(format!("no free port between {LOWEST} and {highest} in 1000 tries"))
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(EPHEMERAL_DEFAULT)
}

fn kernel_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_lie_below_the_ephemeral_range_and_are_never_given_twice() {
        let start = ephemeral_start();
        let ports: Vec<u16> = (0..200).map(|_| free_port().expect("a free port")).collect();
        assert!(ports.iter().all(|p| (LOWEST..start).contains(p)), "{ports:?} not in {LOWEST}..{start}");
        let distinct: HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for p in ports {
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok(), "port {p} handed out while in use");
        }
    }
}
