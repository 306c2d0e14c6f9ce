//! `distlock top [PREFIX]`: a live terminal view of the configured provider: held locks with
//! their TTL left, published waits, deadlock cycles, and contention per key class as this
//! process recorded it. Redrawn every second with plain ANSI codes; `--once` prints one frame
//! without them and exits.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use distlock::{LockConfig, LockManager};
use distlock_serve::snapshot::{Column, CLASS_COLUMNS, LOCK_COLUMNS, WAIT_COLUMNS};
use distlock_serve::Snapshot;

/// Time between two frames.
const EVERY: Duration = Duration::from_secs(1);

/// The widest a key or owner is shown; longer ones are cut with `…`.
const MAX_CELL: usize = 60;

/// Arguments of `distlock top`.
#[derive(clap::Args, Debug)]
pub(crate) struct TopArgs {
    /// Key prefix (empty: everything).
    #[arg(default_value = "")]
    prefix: String,
    /// Print one frame and exit: 0 when the provider is healthy and its locks were read, 1
    /// otherwise.
    #[arg(long)]
    once: bool,
}

/// Shows frames until Ctrl-C or SIGTERM (or one, with `--once`), then closes the provider.
pub(crate) async fn run(config: LockConfig, args: TopArgs) -> distlock::Result<ExitCode> {
    // This process's own view of contention: what it records from now on.
    let metrics = distlock_serve::install_recorder()
        .map_err(|e| distlock::LockError::Config(format!("metrics recorder: {e}")))?;
    let manager = LockManager::new(None, config).await?;
    let provider = manager.lock_provider().clone();
    let stop = match crate::stop_signal() {
        Ok(stop) => stop,
        Err(e) => {
            manager.close().await?;
            return Err(distlock::LockError::Config(format!("cannot watch for signals: {e}")));
        }
    };
    let result = async {
        tokio::pin!(stop);
        loop {
            let snapshot = Snapshot::read(&*provider, &args.prefix, Some(&metrics)).await?;
            if args.once {
                print!("{}", frame(&snapshot));
                let ok = snapshot.health.healthy && snapshot.locks_read();
                return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            // Home, clear the screen, draw.
            print!("\x1b[H\x1b[2J{}", frame(&snapshot));
            let _ = std::io::stdout().flush();
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
            }
        }
    }
    .await;
    manager.close().await?;
    result
}

/// One frame of `snapshot` as plain text.
pub(crate) fn frame(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let prefix = if snapshot.prefix.is_empty() {
        "every key".to_string()
    } else {
        format!("under `{}`", clean(&snapshot.prefix))
    };
    let h = &snapshot.health;
    let health = if h.healthy {
        format!("healthy ({:.3} ms)", h.latency_ms.unwrap_or_default())
    } else {
        format!("UNHEALTHY: {}", clean(h.error.as_deref().unwrap_or_default()))
    };
    let _ = writeln!(
        out,
        "distlock top: {} · {prefix} · {} · {health}",
        snapshot.provider,
        humantime::format_rfc3339_seconds(snapshot.taken_at)
    );
    for e in &snapshot.errors {
        let _ = writeln!(out, "error: {}", clean(e));
    }
    if !snapshot.cycles.is_empty() {
        let _ = writeln!(out, "\nDEADLOCKS ({})", snapshot.cycles.len());
        for cycle in &snapshot.cycles {
            let victim = cycle.victim();
            let _ = writeln!(
                out,
                "! {}; broken at {}'s wait for `{}` (the youngest)",
                clean(&cycle.to_string()),
                clean(&victim.waiter),
                clean(&victim.key)
            );
        }
    }
    let locks: Vec<_> = snapshot.locks.iter().collect();
    let _ = writeln!(out, "\nHELD LOCKS ({})", locks.len());
    table(&mut out, LOCK_COLUMNS, &locks, "no lock held", |l| snapshot.lock_in_cycle(l));
    let _ = writeln!(out, "\nLONGEST HOLDS");
    table(&mut out, LOCK_COLUMNS, &snapshot.longest_holds(), "no lock held", |l| snapshot.lock_in_cycle(l));
    let waits: Vec<_> = snapshot.waits.iter().collect();
    let _ = writeln!(out, "\nWAITS ({})", waits.len());
    table(&mut out, WAIT_COLUMNS, &waits, "nobody waits", |w| snapshot.wait_in_cycle(w));
    out.push_str("\nCONTENTION BY CLASS (as recorded by this process)\n");
    match &snapshot.classes {
        Some(classes) => {
            let classes: Vec<_> = classes.iter().collect();
            table(&mut out, CLASS_COLUMNS, &classes, "nothing recorded yet", |_| false);
        }
        None => out.push_str("  no metrics recorder\n"),
    }
    out
}

/// `rows` under upper-case headers, columns as wide as their widest cell; rows for which
/// `mark` holds (part of a deadlock) start with `!`.
fn table<T>(out: &mut String, columns: &[Column<T>], rows: &[&T], empty: &str, mark: impl Fn(&T) -> bool) {
    if rows.is_empty() {
        let _ = writeln!(out, "  {empty}");
        return;
    }
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| columns.iter().map(|c| cell(&(c.cell)(r))).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells.iter().map(|row| row[i].chars().count()).chain([c.header.len()]).max().unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, marker: char, row: &[String]| {
        out.push(marker);
        for (i, (cell, c)) in row.iter().zip(columns).enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if c.numeric {
                let _ = write!(out, " {pad}{cell}");
            } else {
                let _ = write!(out, " {cell}{pad}");
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_uppercase()).collect();
    line(out, ' ', &headers);
    for (row, cells) in rows.iter().zip(&cells) {
        line(out, if mark(row) { '!' } else { ' ' }, cells);
    }
}

/// `s` safe to print on a terminal: control characters (escape sequences in a key, say) shown
/// escaped.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A table cell: [`clean`], and cut at [`MAX_CELL`] characters.
fn cell(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_CELL).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    clean(&out)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use distlock::deadlock::{Cycle, WaitEdge};
    use distlock_serve::{ClassStats, HealthView, LockView, WaitView};

    use super::*;

    fn lock(key: &str, owner: &str, token: u64) -> LockView {
        LockView {
            key: key.into(),
            owner: owner.into(),
            token,
            remaining_ttl_ms: 59_000,
            depth: 1,
            held_for_ms: token * 100,
        }
    }

    fn wait(key: &str, owner: &str, id: u64, holder: &str) -> WaitView {
        WaitView {
            key: key.into(),
            owner: owner.into(),
            id,
            since: SystemTime::now(),
            waited_ms: 2_500,
            remaining_ttl_ms: 3_000,
            holder: Some(holder.into()),
        }
    }

    fn edge(waiter: &str, key: &str, holder: &str, id: u64, age_s: u64) -> WaitEdge {
        WaitEdge {
            waiter: waiter.into(),
            key: key.into(),
            holder: holder.into(),
            id,
            since: SystemTime::now() - Duration::from_secs(age_s),
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            provider: "memory".into(),
            taken_at: SystemTime::now(),
            prefix: "dl:".into(),
            health: HealthView {
                healthy: true,
                latency_ms: Some(0.25),
                detail: Some("ok".into()),
                error: None,
            },
            locks: vec![
                lock("dl:a", "alice", 7),
                lock("dl:b", "bob", 8),
                lock("dl:\x1b[31mred", "carol", 12345),
            ],
            waits: vec![wait("dl:a", "bob", 2, "alice"), wait("dl:b", "alice", 1, "bob")],
            cycles: vec![Cycle {
                edges: vec![edge("alice", "dl:b", "bob", 1, 5), edge("bob", "dl:a", "alice", 2, 3)],
            }],
            classes: Some(vec![ClassStats {
                class: "dl".into(),
                acquired: 3,
                contended: 2,
                wait_seconds_sum: 0.3,
                wait_count: 3,
                ..ClassStats::default()
            }]),
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_frame_shows_locks_waits_cycles_and_classes() {
        let text = frame(&snapshot());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("distlock top: memory · under `dl:` · "), "{text}");
        assert!(lines[0].ends_with("healthy (0.250 ms)"), "{text}");
        assert!(
            text.contains(
                "DEADLOCKS (1)\n! alice waits for `dl:b` held by bob, bob waits for `dl:a` held by alice; \
                 broken at bob's wait for `dl:a` (the youngest)\n"
            ),
            "{text}"
        );
        let held = text.split("HELD LOCKS (3)\n").nth(1).expect("the locks table");
        let held: Vec<&str> = held.lines().take(4).collect();
        assert_eq!(
            held,
            vec![
                "  KEY              OWNER TOKEN TTL LEFT DEPTH   HELD",
                "! dl:a             alice     7    59.0s     1  700ms",
                "! dl:b             bob       8    59.0s     1  800ms",
                "  dl:\\u{1b}[31mred carol 12345    59.0s     1 20m34s",
            ],
            "{text}"
        );
        let longest = text.split("LONGEST HOLDS\n").nth(1).expect("the longest holds");
        let order: Vec<&str> =
            longest.lines().skip(1).take(3).map(|l| l[2..].split_whitespace().nth(1).unwrap_or("")).collect();
        assert_eq!(order, vec!["carol", "bob", "alice"], "longest first: {text}");
        assert!(!text.contains('\x1b'), "no raw escape from a key reaches the terminal: {text:?}");
        let waits = text.split("WAITS (2)\n").nth(1).expect("the waits table");
        assert!(waits.lines().nth(1).unwrap().starts_with("! dl:a bob    alice"), "{text}");
        let classes = text.split("CONTENTION BY CLASS").nth(1).expect("the classes table");
        let row = classes.lines().nth(2).expect("one class row");
        assert!(row.starts_with("  dl") && row.ends_with("100ms"), "mean wait 0.3 s / 3: {text}");
    }

    #[test]
    fn an_empty_or_failing_provider_says_so() {
        let mut s = snapshot();
        s.locks.clear();
        s.waits.clear();
        s.cycles.clear();
        s.classes = None;
        s.health =
            HealthView { healthy: false, latency_ms: None, detail: None, error: Some("closed".into()) };
        s.errors = vec!["locks: the provider was closed".into()];
        let text = frame(&s);
        assert!(text.lines().next().unwrap().ends_with("UNHEALTHY: closed"), "{text}");
        for part in [
            "error: locks: the provider was closed",
            "HELD LOCKS (0)\n  no lock held",
            "WAITS (0)\n  nobody waits",
            "  no metrics recorder",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert!(!text.contains("DEADLOCKS"), "{text}");
    }

    #[test]
    fn long_cells_are_cut() {
        let long = "k".repeat(100);
        let cut = cell(&long);
        assert_eq!(cut.chars().count(), MAX_CELL + 1);
        assert!(cut.ends_with('…'));
    }
}
