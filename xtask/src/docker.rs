//! `cargo xtask test --docker`: the conformance suites with every service in a container
//! that the tests start themselves (lock-testkit's `docker` feature), on a machine that has no
//! container registry.
//!
//! 1. Installs Debian's `docker.io` and `debootstrap` when missing (as root).
//! 2. Starts a `dockerd` of its own, loopback-only: no bridge, no iptables, no forwarding or
//!    masquerading; its data root under [`cache_dir`] (`/var/cache/distlock-docker`, outside
//!    the clone, so fresh clones on one machine share the images), its socket and state under
//!    `/run`. An engine already answering on that socket is used and left running.
//! 3. Builds the service image when the cache lacks it: a Debian minbase root file system
//!    (debootstrap, Debian's mirror) with `redis-server`, `etcd-server`, `mariadb-server` and
//!    `postgresql`, plus the entrypoint `docker/entrypoint.sh`, imported with
//!    `docker import` and tagged once per service. The tag carries a hash of the entrypoint
//!    and the package list, so a change rebuilds it.
//! 4. Runs the conformance suites with no service URL set, the images named by
//!    `DISTLOCK_TEST_*_IMAGE` and `DISTLOCK_TEST_DOCKER_NETWORK=host`: the servers run on the
//!    host's network, on free loopback ports the tests choose. The client reaches the engine
//!    through an [API version shim](api_shim).
//! 5. Removes every container labelled by lock-testkit, and stops the daemon if it started
//!    it, whatever the outcome.

mod api_shim;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, run, run_tests, services, Counts, Result};

/// The engine's socket (short: a Unix socket path has a limit near 100 bytes).
const ENGINE_SOCKET: &str = "/run/distlock-docker.sock";
/// The socket of the API version shim the tests talk to.
const SHIM_SOCKET: &str = "/run/distlock-docker-api.sock";
/// The engine's state (containerd's sockets among it).
const EXEC_ROOT: &str = "/run/distlock-docker";
/// The label lock-testkit puts on its containers.
const TESTKIT_LABEL: &str = "org.distlock.testkit";
/// The Debian release and mirror of the image (the machine's own mirror).
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// The servers in the image.
const PACKAGES: &[&str] = &["redis-server", "etcd-server", "mariadb-server", "postgresql"];
/// The image's entrypoint.
const ENTRYPOINT: &str = include_str!("docker/entrypoint.sh");
/// The services' image variables and the repository each tag of the image gets.
const IMAGES: &[(&str, &str)] = &[
    ("DISTLOCK_TEST_MYSQL_IMAGE", "distlock-test/mariadb"),
    ("DISTLOCK_TEST_POSTGRES_IMAGE", "distlock-test/postgres"),
    ("DISTLOCK_TEST_REDIS_IMAGE", "distlock-test/redis"),
    ("DISTLOCK_TEST_ETCD_IMAGE", "distlock-test/etcd"),
];
/// The service variables that must be unset so that the tests start containers.
const URL_VARS: &[&str] = &[
    "DISTLOCK_TEST_MYSQL_URL",
    "DISTLOCK_TEST_POSTGRES_URL",
    "DISTLOCK_TEST_REDIS_URL",
    "DISTLOCK_TEST_ETCD_ENDPOINTS",
];

/// The backends whose conformance suites run.
pub(crate) const BACKENDS: &[&str] =
    &["lock-memory", "lock-mysql", "lock-postgres", "lock-redis", "lock-etcd"];

/// What to run: whole suites, and single cases of the other backends.
pub(crate) struct Plan<'a> {
    /// Backends whose whole conformance suite runs.
    pub(crate) full: &'a [&'a str],
    /// The case run on every other backend of [`BACKENDS`] (a test name filter).
    pub(crate) one_case: Option<&'a str>,
}

/// The part of `cargo xtask ci` (and `cargo xtask test --docker --quick`): the whole suite on
/// Redis (the quickest server to start) and one case with contention on every other backend,
/// so that each service's container is started and used, within a few minutes even with the
/// image to build.
pub(crate) const CI_PLAN: Plan<'static> =
    Plan { full: &["lock-redis"], one_case: Some("mutual_exclusion_under_contention") };

/// Runs [`CI_PLAN`].
pub(crate) fn ci() -> Result<Counts> {
    test(&CI_PLAN, &[])
}

/// The directory of the engine's data and the image's root file system
/// (`DISTLOCK_DOCKER_DIR`, else `/var/cache/distlock-docker`).
fn cache_dir() -> PathBuf {
    std::env::var_os("DISTLOCK_DOCKER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/distlock-docker"))
}

/// Runs `plan` against containers; see the module.
pub(crate) fn test(plan: &Plan, extra: &[&String]) -> Result<Counts> {
    let started = Instant::now();
    ensure_tools()?;
    let engine = Engine::start()?;
    let outcome = (|| {
        let max_minor = engine.api_minor()?;
        let shim = api_shim::ApiShim::start(Path::new(SHIM_SOCKET), Path::new(ENGINE_SOCKET), max_minor)?;
        let tag = ensure_image()?;
        engine.remove_test_containers();
        let counts = run_suites(plan, extra, &shim.docker_host(), &tag);
        engine.remove_test_containers();
        counts
    })();
    drop(engine);
    eprintln!("xtask: docker pass took {:.0?}", started.elapsed());
    outcome
}

/// `docker.io` (the engine and its client) and `debootstrap`, from Debian.
fn ensure_tools() -> Result {
    if !Path::new("/usr/sbin/dockerd").exists() {
        services::apt_install("docker.io")?;
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        services::apt_install("debootstrap")?;
    }
    Ok(())
}

/// The engine the tests use, stopped on drop if this run started it.
struct Engine {
    child: Option<Child>,
}

impl Engine {
    fn start() -> Result<Engine> {
        if docker_cli()
            .args(["version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            eprintln!(
                "xtask: a Docker engine already answers on {ENGINE_SOCKET}; using it, leaving it running"
            );
            return Ok(Engine { child: None });
        }
        let root = cache_dir();
        let data = root.join("engine");
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let log_path = Path::new("target").join("docker").join("dockerd.log");
        std::fs::create_dir_all(log_path.parent().expect("a parent")).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = Command::new("dockerd");
        cmd.arg(format!("--host=unix://{ENGINE_SOCKET}"))
            .arg(format!("--data-root={}", data.display()))
            .arg(format!("--exec-root={EXEC_ROOT}"))
            .arg(format!("--pidfile={EXEC_ROOT}.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ])
            .arg("--userland-proxy=false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        eprintln!("$ {cmd:?}");
        let child = cmd.spawn().map_err(|e| format!("cannot start dockerd: {e}"))?;
        let engine = Engine { child: Some(child) };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = docker_cli().args(["version"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
            if ok.is_ok_and(|s| s.success()) {
                eprintln!("xtask: dockerd up on {ENGINE_SOCKET}");
                return Ok(engine);
            }
            if Instant::now() > until {
                return Err(format!("dockerd did not answer within 60 s; see {}", log_path.display()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The minor number of the newest API version the engine speaks (`1.NN`).
    fn api_minor(&self) -> Result<u32> {
        let out = docker_cli()
            .args(["version", "--format", "{{.Server.APIVersion}}"])
            .output()
            .map_err(|e| format!("docker version: {e}"))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        version
            .strip_prefix("1.")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| format!("unexpected engine API version {version:?}"))
    }

    /// Removes every container lock-testkit labelled (left by a killed run, or by a test
    /// binary whose reaper did not get to run).
    fn remove_test_containers(&self) {
        let Ok(out) =
            docker_cli().args(["ps", "-aq", "--filter", &format!("label={TESTKIT_LABEL}")]).output()
        else {
            return;
        };
        let ids: Vec<String> =
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
        if ids.is_empty() {
            return;
        }
        eprintln!("xtask: removing {} test container(s)", ids.len());
        // Their reapers may be removing them already: errors here are that race.
        let _ = docker_cli()
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SIGTERM: dockerd stops its containers and containerd, then exits.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                eprintln!("xtask: dockerd stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("xtask: dockerd killed after 30 s");
    }
}

/// The `docker` client on this run's engine.
fn docker_cli() -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", format!("unix://{ENGINE_SOCKET}"));
    cmd
}

/// A tag naming the image's content: a hash of the suite, packages and entrypoint.
fn image_tag() -> String {
    // FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in SUITE.bytes().chain(PACKAGES.join(",").bytes()).chain(ENTRYPOINT.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{SUITE}-{:08x}", hash >> 32)
}

/// Builds and tags the service image unless the engine has it; returns its tag.
fn ensure_image() -> Result<String> {
    let tag = image_tag();
    let base = format!("distlock-test/services:{tag}");
    let have =
        docker_cli().args(["image", "inspect", &base]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if have.is_ok_and(|s| s.success()) {
        eprintln!("xtask: image {base} cached");
    } else {
        let started = Instant::now();
        build_image(&base)?;
        eprintln!("xtask: built {base} in {:.0?}", started.elapsed());
    }
    for (_, repo) in IMAGES {
        run(docker_cli().args(["tag", &base, &format!("{repo}:{tag}")]))?;
    }
    Ok(tag)
}

/// debootstrap, the servers, the entrypoint, `docker import`.
fn build_image(image: &str) -> Result {
    let rootfs = cache_dir().join(format!("rootfs-{}", image.rsplit(':').next().unwrap_or("image")));
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    }
    run(Command::new("debootstrap").args(["--variant=minbase", SUITE]).arg(&rootfs).arg(MIRROR))?;
    // No service starts while its package installs.
    let policy = rootfs.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(|e| e.to_string())?;
    run(Command::new("chmod").arg("755").arg(&policy))?;
    run(Command::new("chroot")
        .arg(&rootfs)
        .args(["apt-get", "install", "-y", "-qq", "--no-install-recommends"])
        .args(PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("chroot").arg(&rootfs).args(["apt-get", "clean"]))?;
    let entrypoint = rootfs.join("usr/local/bin/docker-entrypoint.sh");
    std::fs::write(&entrypoint, ENTRYPOINT).map_err(|e| e.to_string())?;
    run(Command::new("chmod").arg("755").arg(&entrypoint))?;
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tar: {e}"))?;
    let mut import = docker_cli();
    import
        .args(["import", "--change", "ENTRYPOINT [\"/usr/local/bin/docker-entrypoint.sh\"]", "-", image])
        .stdin(tar.stdout.expect("piped"))
        .stdout(Stdio::null());
    run(&mut import)?;
    // The image holds it now; the next build starts afresh.
    std::fs::remove_dir_all(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))
}

/// The conformance suites with the tests' environment for containers: built the way
/// `cargo xtask test` builds them (the whole workspace, every feature, so the artifacts are
/// shared), then each backend's binary run on its own, whole or filtered to one case.
fn run_suites(plan: &Plan, extra: &[&String], docker_host: &str, tag: &str) -> Result<Counts> {
    let binaries = build_suites()?;
    let mut counts = Counts::default();
    for backend in BACKENDS {
        let filter = if plan.full.contains(backend) {
            None
        } else if let Some(case) = plan.one_case {
            Some(case)
        } else {
            continue;
        };
        let (exe, dir) = binaries
            .iter()
            .find(|(b, _, _)| b == backend)
            .map(|(_, exe, dir)| (exe, dir))
            .ok_or_else(|| format!("{backend} has no conformance suite"))?;
        let mut cmd = Command::new(exe);
        cmd.current_dir(dir).args(extra).args(filter);
        for var in URL_VARS {
            cmd.env_remove(var);
        }
        for (var, repo) in IMAGES {
            cmd.env(var, format!("{repo}:{tag}"));
        }
        cmd.env("DOCKER_HOST", docker_host)
            .env("DISTLOCK_TEST_DOCKER_NETWORK", "host")
            .env("DISTLOCK_REQUIRE_SERVICES", "1")
            .env("DISTLOCK_TEST_LONG", "0");
        eprintln!(
            "xtask: {backend}'s conformance suite{}",
            filter.map(|f| format!(", case {f}")).unwrap_or_default()
        );
        run_tests(&mut cmd, &mut counts)?;
    }
    if counts.passed == 0 {
        return Err("no conformance case ran against containers".into());
    }
    println!("docker tests: {} passed, {} failed", counts.passed, counts.failed);
    Ok(counts)
}

/// Builds every backend's `conformance` test binary; returns (package, executable, package
/// directory) of each.
fn build_suites() -> Result<Vec<(String, PathBuf, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--all-features",
        "--test",
        "conformance",
        "--no-run",
        "--message-format=json",
    ]);
    eprintln!("$ {cmd:?}");
    let out = cmd.stderr(Stdio::inherit()).output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed with {}", out.status));
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(exe), Some(src)) = (msg["executable"].as_str(), msg["target"]["src_path"].as_str()) else {
            continue;
        };
        if msg["target"]["name"] != "conformance" {
            continue;
        }
        // <package dir>/tests/conformance.rs
        let dir = Path::new(src).parent().and_then(Path::parent).ok_or("a test outside tests/")?;
        let package = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        binaries.push((package, PathBuf::from(exe), dir.to_path_buf()));
    }
    Ok(binaries)
}
