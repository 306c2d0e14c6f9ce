//! CPU time and memory from `/proc`: of this process, and of the local servers the bench talks
//! to, found by the TCP port they listen on (so private servers of other tests, with the same
//! program names, are never counted).

use std::collections::HashSet;
use std::fs;
use std::time::Duration;

/// Linux's `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat` (100 on every
/// mainstream architecture; `getconf CLK_TCK`).
const TICKS_PER_SECOND: u64 = 100;

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    // Field 3 (state) is a letter; keep its place with a zero.
    Some(rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// utime + stime (`own`) and cutime + cstime (`children`) of `pid`, in ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64, u32)> {
    let f = stat_fields(pid)?;
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    Some((f[11] + f[12], f[13] + f[14], f[1] as u32))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// CPU time this process has used so far (user + system).
pub(crate) fn own_cpu() -> Duration {
    ticks_to_duration(cpu_ticks(std::process::id()).map_or(0, |(own, _, _)| own))
}

/// This process's resident set (`VmRSS`), in bytes.
pub(crate) fn own_rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Inodes of the sockets listening on TCP `port` (IPv4 or IPv6).
fn listening_inodes(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                if let Ok(inode) = f[9].parse() {
                    inodes.insert(inode);
                }
            }
        }
    }
    inodes
}

fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The process that listens on TCP `port` (the first found), if this process may see its
/// file descriptors.
fn pid_listening_on(port: u16) -> Option<u32> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    pids().into_iter().find(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd")).ok().is_some_and(|fds| {
            fds.filter_map(|e| fs::read_link(e.ok()?.path()).ok()).any(|target| {
                let t = target.to_string_lossy();
                t.strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse().ok())
                    .is_some_and(|i| inodes.contains(&i))
            })
        })
    })
}

/// A local server whose CPU time the bench reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Server {
    pid: u32,
    /// Also count the processes it forked (PostgreSQL: one backend process per connection,
    /// plus what its exited children used, which the kernel adds to the parent's cutime).
    with_children: bool,
}

impl Server {
    /// The server listening on `port` of this machine; `None` when it is not a local process
    /// this bench can see (another host, a container, another user's process).
    pub(crate) fn on_port(port: u16, with_children: bool) -> Option<Server> {
        pid_listening_on(port).map(|pid| Server { pid, with_children })
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU time the server has used so far (user + system).
    pub(crate) fn cpu(&self) -> Duration {
        let Some((own, children, _)) = cpu_ticks(self.pid) else { return Duration::ZERO };
        if !self.with_children {
            return ticks_to_duration(own);
        }
        let forked: u64 = pids()
            .into_iter()
            .filter(|&p| p != self.pid)
            .filter_map(cpu_ticks)
            .filter(|&(_, _, ppid)| ppid == self.pid)
            .map(|(own, _, _)| own)
            .sum();
        ticks_to_duration(own + children + forked)
    }
}
