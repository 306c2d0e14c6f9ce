//! The local services the backends' integration tests talk to.
//!
//! A service is needed when its backend crate is in the workspace. `up` leaves a reachable
//! service alone; otherwise it installs the Debian package when the binary is missing (only as
//! root) and starts the server in the background, recording its pid under
//! `target/services/` so that `down` stops only what `up` started.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{run, Result};

/// One local service.
pub(crate) struct Service {
    name: &'static str,
    /// The backend crate whose tests need it.
    crate_dir: &'static str,
    port: u16,
    /// Environment the tests read to find it.
    env: &'static [(&'static str, &'static str)],
    /// Debian package providing `binary`.
    package: &'static str,
    binary: &'static str,
    /// Arguments to start it in the foreground (xtask detaches it).
    args: fn(&Path) -> Vec<String>,
    /// Starts it some other way than running `binary` with `args` (its own service manager).
    start: Option<fn() -> Result>,
    /// Run once it is reachable, whoever started it: roles, databases.
    prepare: Option<fn() -> Result>,
}

const ALL: &[Service] = &[
    Service {
        name: "mariadb",
        crate_dir: "crates/lock-mysql",
        port: 3306,
        env: &[("DISTLOCK_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")],
        package: "mariadb-server",
        binary: "/usr/sbin/mariadbd",
        // As the machine's own init does: mariadbd switches to the `mysql` user of my.cnf.
        args: |_| Vec::new(),
        start: None,
        prepare: None,
    },
    Service {
        name: "postgres",
        crate_dir: "crates/lock-postgres",
        port: 5432,
        env: &[("DISTLOCK_TEST_POSTGRES_URL", "postgres://distlock@127.0.0.1:5432/distlock")],
        package: "postgresql",
        binary: "/usr/bin/pg_ctlcluster",
        args: |_| Vec::new(),
        start: Some(start_postgres),
        prepare: Some(prepare_postgres),
    },
    Service {
        name: "redis",
        crate_dir: "crates/lock-redis",
        port: 6379,
        env: &[("DISTLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379")],
        package: "redis-server",
        binary: "/usr/bin/redis-server",
        args: |_| {
            ["--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"]
                .map(String::from)
                .to_vec()
        },
        start: None,
        prepare: None,
    },
    Service {
        name: "etcd",
        crate_dir: "crates/lock-etcd",
        port: 2379,
        env: &[("DISTLOCK_TEST_ETCD_ENDPOINTS", "http://127.0.0.1:2379")],
        package: "etcd-server",
        binary: "/usr/bin/etcd",
        args: |dir| {
            vec![
                "--data-dir".into(),
                dir.join("etcd-data").display().to_string(),
                "--listen-client-urls".into(),
                "http://127.0.0.1:2379".into(),
                "--advertise-client-urls".into(),
                "http://127.0.0.1:2379".into(),
                "--listen-peer-urls".into(),
                "http://127.0.0.1:2380".into(),
            ]
        },
        start: None,
        prepare: None,
    },
];

/// The services whose backend crates exist in this workspace.
pub(crate) fn needed() -> Vec<&'static Service> {
    ALL.iter().filter(|s| Path::new(s.crate_dir).exists()).collect()
}

fn reachable(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn state_dir() -> PathBuf {
    Path::new("target").join("services")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs a Debian package (as root only).
pub(crate) fn apt_install(package: &str) -> Result {
    install(package, &[])
}

/// Installs a Debian package without the packages it only recommends (as root only): for a
/// package wanted for one tool, such as `prometheus` for `promtool`.
pub(crate) fn apt_install_without_recommends(package: &str) -> Result {
    install(package, &["--no-install-recommends"])
}

fn install(package: &str, options: &[&str]) -> Result {
    if !is_root() {
        return Err(format!("`{package}` is not installed and xtask is not root: install it first"));
    }
    eprintln!("xtask: installing Debian package {package}");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(options)
        .arg(package)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The Debian cluster `main` of the installed PostgreSQL version, started by its own tool
/// (it runs the server as the `postgres` user, with the cluster's configuration).
fn start_postgres() -> Result {
    let versions = std::fs::read_dir("/etc/postgresql").map_err(|e| format!("/etc/postgresql: {e}"))?;
    let mut versions: Vec<String> =
        versions.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
    let version = versions.pop().ok_or("no PostgreSQL cluster under /etc/postgresql")?;
    run(Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &version, "main", "start"]))?;
    // Recorded like the services xtask runs itself, so that `down` stops it (smart shutdown).
    let pid = std::fs::read_to_string(format!("/var/run/postgresql/{version}-main.pid"))
        .map_err(|e| format!("the cluster's pid file: {e}"))?;
    let dir = state_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pid = pid.lines().next().unwrap_or_default().trim().to_string();
    std::fs::write(dir.join("postgres.pid"), pid).map_err(|e| e.to_string())
}

/// The `distlock` role and database the tests use (trust authentication on 127.0.0.1 is
/// Debian's default for local connections of the cluster's own tools; the role needs no
/// password there). Runs `psql` as the `postgres` superuser over the local socket.
fn prepare_postgres() -> Result {
    let psql = |sql: &str| -> Result<String> {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "psql"]);
            c
        } else {
            let mut c = Command::new("psql");
            c.args(["-h", "127.0.0.1", "-U", "postgres"]);
            c
        };
        let out = cmd
            .args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql -c {sql:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if psql("SELECT 1 FROM pg_roles WHERE rolname = 'distlock'")?.is_empty() {
        psql("CREATE ROLE distlock LOGIN")?;
        eprintln!("xtask: created PostgreSQL role distlock");
    }
    if psql("SELECT 1 FROM pg_database WHERE datname = 'distlock'")?.is_empty() {
        psql("CREATE DATABASE distlock OWNER distlock")?;
        eprintln!("xtask: created PostgreSQL database distlock");
    }
    Ok(())
}

fn start(s: &Service) -> Result {
    if !Path::new(s.binary).exists() {
        apt_install(s.package)?;
    }
    if let Some(start) = s.start {
        start()?;
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if reachable(s.port) {
                eprintln!("xtask: {} started on 127.0.0.1:{}", s.name, s.port);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        return Err(format!("{} did not open port {} within 60 s", s.name, s.port));
    }
    let dir = state_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = std::fs::File::create(dir.join(format!("{}.log", s.name))).map_err(|e| e.to_string())?;
    let child = Command::new(s.binary)
        .args((s.args)(&dir))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", s.binary))?;
    std::fs::write(dir.join(format!("{}.pid", s.name)), child.id().to_string()).map_err(|e| e.to_string())?;
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if reachable(s.port) {
            eprintln!("xtask: {} started (pid {}) on 127.0.0.1:{}", s.name, child.id(), s.port);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{} did not open port {} within 60 s; see target/services/{}.log", s.name, s.port, s.name))
}

/// Build tools the workspace's crates need: etcd-client compiles etcd's protobuf definitions
/// with `protoc`. Also the command-line clients the testkit's private servers are checked
/// with (`etcdctl`; `redis-cli` and `mariadb` come with their servers).
pub(crate) fn ensure_build_tools() -> Result {
    let has_protoc = Command::new("protoc").arg("--version").output().is_ok_and(|o| o.status.success());
    if Path::new("crates/lock-etcd").exists() && !has_protoc {
        apt_install("protobuf-compiler")?;
    }
    if Path::new("crates/lock-etcd").exists() && !Path::new("/usr/bin/etcdctl").exists() {
        apt_install("etcd-client")?;
    }
    // distributed-lock-mysql, measured by the peer benches, builds sqlx with native-tls, which
    // links OpenSSL through pkg-config.
    let has_openssl_dev =
        Command::new("pkg-config").args(["--exists", "openssl"]).status().is_ok_and(|s| s.success());
    if Path::new("benches/peers").exists() && !has_openssl_dev {
        apt_install("pkg-config")?;
        apt_install("libssl-dev")?;
    }
    // The etcd TLS test makes its certificates with the openssl command.
    if Path::new("crates/lock-etcd/tests/tls.rs").exists() && !Path::new("/usr/bin/openssl").exists() {
        apt_install("openssl")?;
    }
    Ok(())
}

/// Makes every service reachable; returns the environment the tests need to find them.
pub(crate) fn up(services: &[&Service]) -> Result<Vec<(String, String)>> {
    ensure_build_tools()?;
    let mut env = Vec::new();
    for s in services {
        if reachable(s.port) {
            eprintln!("xtask: {} already up on 127.0.0.1:{}", s.name, s.port);
        } else {
            start(s)?;
        }
        if let Some(prepare) = s.prepare {
            prepare()?;
        }
        for (k, v) in s.env {
            // A value the caller set wins (a remote server, another port).
            let v = std::env::var(k).unwrap_or_else(|_| v.to_string());
            env.push((k.to_string(), v));
        }
    }
    if services.is_empty() {
        eprintln!("xtask: no backend in this workspace needs a service");
    }
    Ok(env)
}

/// Stops the services that `up` started.
pub(crate) fn down(services: &[&Service]) -> Result {
    for s in services {
        let pid_file = state_dir().join(format!("{}.pid", s.name));
        match std::fs::read_to_string(&pid_file) {
            Ok(pid) => {
                let _ = Command::new("kill").arg(pid.trim()).status();
                let _ = std::fs::remove_file(&pid_file);
                eprintln!("xtask: stopped {} (pid {})", s.name, pid.trim());
            }
            Err(_) => eprintln!("xtask: {} was not started by xtask; left alone", s.name),
        }
    }
    Ok(())
}

/// Prints which services are reachable.
pub(crate) fn status(services: &[&Service]) {
    if services.is_empty() {
        println!("no backend in this workspace needs a service");
    }
    for s in services {
        let state = if reachable(s.port) { "up" } else { "down" };
        println!("{:8} 127.0.0.1:{:<5} {state}", s.name, s.port);
    }
}
