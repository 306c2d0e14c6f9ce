//! `distlock bench` run as a separate process on every backend: each workload completes cycles
//! without a failed operation, the hot key shows hand-overs, the JSON report says what ran,
//! and nothing the run locked is left behind.

mod common;

use std::time::Duration;

use common::{config_toml, distlock, BACKENDS};
use distlock::{LockConfig, LockProviderFactory};
use serde_json::Value;

/// Runs a short `distlock bench --json` on `name`; `None` when the backend's server is missing
/// (a loud skip, or a failure under `DISTLOCK_REQUIRE_SERVICES=1`).
async fn bench_on(name: &str) -> Option<()> {
    let dir = std::env::temp_dir().join(format!("distlock-cli-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("distlock.toml");
    std::fs::write(&config_file, config_toml(name)).unwrap();
    let config = LockConfig::load_over(LockConfig::memory(), Some(&config_file)).expect("test configuration");
    let connected =
        LockProviderFactory::new(None).create_lock_provider(&config).await.map_err(|e| e.to_string());
    let provider = lock_testkit::require_or_skip(&format!("bench on {name}"), connected)?;

    let prefix = format!("cli-bench/{name}/{}/", fastrand::u64(..));
    let out = tokio::task::spawn_blocking({
        let (config_file, prefix) = (config_file.clone(), prefix.clone());
        move || {
            distlock()
                .arg("--config")
                .arg(&config_file)
                .args(["bench", "--json", "--duration", "400ms", "--distinct-tasks", "4", "--hot-tasks", "4"])
                .args(["--prefix", &prefix])
                .output()
        }
    })
    .await
    .unwrap()
    .expect("run distlock bench");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{name}: {e}: {stdout}"));

    assert_eq!(report["provider"], name, "{report}");
    let run_prefix = report["prefix"].as_str().expect("prefix");
    assert!(run_prefix.starts_with(&prefix), "{report}");
    let workloads = report["workloads"].as_array().expect("workloads");
    let names: Vec<&str> = workloads.iter().map(|w| w["workload"].as_str().unwrap()).collect();
    assert_eq!(names, ["uncontended", "distinct", "hot"], "{report}");
    for w in workloads {
        let cycles = w["cycles"].as_u64().unwrap();
        assert!(cycles >= 2, "{name}: every workload completes cycles: {w}");
        assert_eq!(w["errors"], 0, "{name}: {w}");
        assert!(w["acquire_p50_us"].as_f64().unwrap() > 0.0, "{w}");
    }
    assert_eq!(workloads[2]["tasks"], 4);
    // Four tasks on one key: every acquisition after the first waited behind a holder.
    assert!(workloads[2]["handovers"].as_u64().unwrap() >= 1, "{name}: {}", workloads[2]);
    assert!(workloads[2]["handover_p50_us"].as_f64().is_some(), "{}", workloads[2]);

    // A separate process locked and released; the server shows nothing left under the run's keys
    // (on memory the locks lived in the bench's own process, so there is nothing to see here).
    if name != "memory" {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let left = provider.list(run_prefix).await.expect("list");
        assert!(left.is_empty(), "{name}: locks left behind: {left:?}");
    }
    provider.close().await.expect("close");
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_workload_on_every_backend() {
    for name in BACKENDS {
        bench_on(name).await;
    }
}

#[test]
fn bench_refuses_bad_options_before_connecting() {
    // An unreachable server: a refusal must come before any connection attempt.
    let out = distlock()
        .args(["--provider", "redis", "bench", "--hot-tasks", "0"])
        .env("DISTLOCK_REDIS__URL", "redis://127.0.0.1:1")
        .output()
        .expect("run distlock bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("hot-tasks") && stderr.contains("outside 1..=10000"), "{stderr}");
}
