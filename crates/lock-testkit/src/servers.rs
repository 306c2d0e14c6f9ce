//! [`PrivateServer`]: a throwaway Redis (alone or as a cluster node), etcd, MariaDB or
//! PostgreSQL server of a test's own, on a free
//! loopback port with its own data directory, for cases that restart, kill or pause the
//! server, or that need TLS and passwords ([`PrivateServer::start_secured`] with
//! [`Security`]). The shared services on the standard ports are never touched.
//!
//! Binaries are looked up at their Debian paths (`/usr/bin/redis-server`, `/usr/bin/etcd`,
//! `/usr/sbin/mariadbd` and its tools, `/usr/lib/postgresql/*/bin/postgres` and its tools) or on
//! `PATH`; `DISTLOCK_TEST_REDIS_BIN`, `DISTLOCK_TEST_ETCD_BIN`, `DISTLOCK_TEST_MARIADB_BIN` and
//! `DISTLOCK_TEST_POSTGRES_BIN` override the server binaries
//! (see [`env`](mod@crate::env)). A
//! missing binary makes [`PrivateServer::start`] return `Err`, which a test hands to
//! [`require_or_skip`](crate::require_or_skip).
//!
//! Everything here blocks (starting MariaDB takes seconds); from async code call it through
//! `tokio::task::spawn_blocking` or on a multi-threaded runtime's `block_in_place`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to accept connections after being started.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Waits until no live (not zombie) process is left in process group `pgid`, or `limit`
/// passed.
fn wait_for_group_exit(pgid: u32, limit: Duration) {
    let in_group = || {
        std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|entry| {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
            // After the command's closing parenthesis: state, ppid, pgrp.
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1);
            state != Some("Z") && pgrp == Some(pgid.to_string().as_str())
        })
    };
    let deadline = Instant::now() + limit;
    while in_group() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The kind of server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `redis-server`, without persistence.
    Redis,
    /// `redis-server` in cluster mode, without persistence of its data: its cluster state
    /// (`nodes.conf`) lives in the data directory and survives a restart. It serves no slot
    /// until it joins a cluster (`redis-cli --cluster create`); its cluster bus listens on a
    /// free port of its own.
    RedisClusterNode,
    /// A single-member `etcd` cluster.
    Etcd,
    /// `mariadbd` with a database `test`; user `root` without password.
    MariaDb,
    /// PostgreSQL's `postgres` with its `postgres` database and superuser, trust
    /// authentication. Run as the `postgres` user when the test runs as root (the server
    /// refuses root), in a process group of its own, so that a kill or a freeze reaches every
    /// backend process, as a machine's crash or stall would.
    Postgres,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::RedisClusterNode => "redis-cluster-node",
            Kind::Etcd => "etcd",
            Kind::MariaDb => "mariadb",
            Kind::Postgres => "postgres",
        }
    }
}

/// Finds a program: the override in `env` if set, else the first of `candidates` that exists,
/// else `name` on `PATH`.
pub(crate) fn find_program(name: &str, env: Option<&str>, candidates: &[&str]) -> Result<PathBuf, String> {
    if let Some(path) = env.and_then(std::env::var_os) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{} points to a missing file {}", env.unwrap_or_default(), path.display()))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|dir| dir.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates.iter().map(PathBuf::from).chain(on_path).find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "`{name}` not found (looked at {candidates:?} and PATH{})",
            env.map(|e| format!("; or set {e}")).unwrap_or_default()
        )
    })
}

/// TLS and authentication of a [`PrivateServer`] ([`PrivateServer::start_secured`]).
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// Serve TLS only, with the server certificate of these files; the CA verifies client
    /// certificates. Redis listens with `--tls-port` (no plain port), etcd on `https://`,
    /// MariaDB with `--ssl-cert`/`--ssl-key`/`--ssl-ca` (plain connections stay possible
    /// unless a user `REQUIRE SSL`), PostgreSQL with `ssl=on` (plain ones too, unless a
    /// password is set).
    pub tls: Option<ServerTls>,
    /// Ask every client for a certificate signed by the CA (Redis `--tls-auth-clients yes`,
    /// etcd `--client-cert-auth`); otherwise none is needed.
    pub client_certs: bool,
    /// Redis: `--requirepass`. etcd: the `root` user's password, with authentication
    /// enabled once the member is up. PostgreSQL: the `postgres` user's password, required
    /// (`scram-sha-256`, over TLS when TLS is on) for every connection over TCP.
    pub password: Option<String>,
}

/// The files a TLS server serves with.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// CA certificate (verifies client certificates).
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server certificate's key.
    pub key: PathBuf,
    /// A client certificate and key for the server's own tools (`etcdctl` when client
    /// certificates are asked for).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Security {
    /// TLS with the server certificate of `certs`, no client certificate needed, no password.
    pub fn tls(certs: &crate::tls::TestCerts) -> Security {
        Security {
            tls: Some(ServerTls {
                ca: certs.ca(),
                cert: certs.server_cert(),
                key: certs.server_key(),
                client: Some((certs.client_cert(), certs.client_key())),
            }),
            ..Security::default()
        }
    }

    /// Sets [`password`](Self::password).
    pub fn password(mut self, password: impl Into<String>) -> Security {
        self.password = Some(password.into());
        self
    }

    /// Sets [`client_certs`](Self::client_certs).
    pub fn client_certs(mut self, on: bool) -> Security {
        self.client_certs = on;
        self
    }
}

/// A server process of a test's own. Dropping it kills the process and removes its data.
#[derive(Debug)]
pub struct PrivateServer {
    kind: Kind,
    security: Security,
    bin: PathBuf,
    port: u16,
    /// etcd's peer port; a Redis cluster node's bus port.
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateServer {
    /// Starts a fresh server of `kind` on a free port of 127.0.0.1 with a new data directory
    /// under the system's temporary directory, and waits (up to 60 s) until it answers.
    /// `Err` when a binary is missing or the server does not come up.
    pub fn start(kind: Kind) -> Result<PrivateServer, String> {
        PrivateServer::start_secured(kind, Security::default())
    }

    /// [`start`](Self::start) with TLS and authentication as `security` says (Redis, etcd,
    /// MariaDB and PostgreSQL; a cluster node ignores it).
    pub fn start_secured(kind: Kind, security: Security) -> Result<PrivateServer, String> {
        let bin = match kind {
            Kind::Redis | Kind::RedisClusterNode => crate::env::redis_bin(),
            Kind::Etcd => crate::env::etcd_bin(),
            Kind::MariaDb => crate::env::mariadb_bin(),
            Kind::Postgres => crate::env::postgres_bin(),
        }?;
        let dir = std::env::temp_dir().join(format!(
            "distlock-{}-{}-{:08x}",
            kind.name(),
            std::process::id(),
            fastrand::u32(..)
        ));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut server = PrivateServer {
            kind,
            security,
            bin,
            port: crate::ports::free_port()?,
            peer_port: crate::ports::free_port()?,
            dir,
            child: None,
        };
        if kind == Kind::MariaDb {
            server.install_mariadb()?;
        }
        if kind == Kind::Postgres {
            server.install_postgres()?;
            server.secure_postgres()?;
        }
        server.launch()?;
        if kind == Kind::Postgres {
            if let Some(password) = &server.security.password {
                server.postgres_sql(&format!("ALTER USER postgres PASSWORD '{password}'"))?;
            }
        }
        Ok(server)
    }

    /// What kind of server this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The client port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL a backend connects to: `redis://127.0.0.1:P`, `http://127.0.0.1:P` (etcd) or
    /// `mysql://root@127.0.0.1:P/test` or `postgres://postgres@127.0.0.1:P/postgres`; with
    /// TLS `rediss://` and `https://`. Never with a password.
    pub fn url(&self) -> String {
        let tls = self.security.tls.is_some();
        match self.kind {
            Kind::Redis if tls => format!("rediss://127.0.0.1:{}", self.port),
            Kind::Redis | Kind::RedisClusterNode => format!("redis://127.0.0.1:{}", self.port),
            Kind::Etcd if tls => format!("https://127.0.0.1:{}", self.port),
            Kind::Etcd => format!("http://127.0.0.1:{}", self.port),
            Kind::MariaDb => format!("mysql://root@127.0.0.1:{}/test", self.port),
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
        }
    }

    /// The server's data directory (MariaDB's unix socket is `data_dir()/sock`; the server's
    /// output goes to `data_dir()/server.log`).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown) and waits for it to exit. The data
    /// directory stays. Stopping a stopped server does nothing.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.kind == Kind::Postgres {
                // The postmaster's backends live on after it; the whole group goes.
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
            if self.kind == Kind::Postgres {
                // A backend still exiting keeps the shared memory attached, and a postmaster
                // started on the directory before it is gone refuses to start.
                wait_for_group_exit(child.id(), READY_WITHIN);
            }
        }
    }

    /// Stops the server and starts it again on the same port and data directory, waiting
    /// until it answers. etcd and MariaDB keep their data; Redis (no persistence) starts
    /// empty, a cluster node with its cluster state (identity, peers, slots). Panics if the
    /// server does not come back.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("{} on port {} did not come back: {e}", self.kind.name(), self.port);
        }
    }

    /// Freezes the server process (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a [`pause`](Self::pause)d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.kind.name()));
        // PostgreSQL: every process of its group (the postmaster and its backends).
        let target = if self.kind == Kind::Postgres { format!("-{pid}") } else { pid.to_string() };
        let status = Command::new("kill").arg(format!("-{sig}")).arg("--").arg(target).status();
        assert!(matches!(status, Ok(s) if s.success()), "kill -{sig} {pid} failed: {status:?}");
    }

    /// `true` if the server answers a minimal request of its protocol within `within`: a
    /// Redis `PING`, an etcd `GET /health`, MariaDB's connection greeting.
    pub fn responds_within(&self, within: Duration) -> bool {
        probe(self.kind, self.addr(), within).is_ok()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn log(&self) -> Result<File, String> {
        File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| format!("cannot open the server log: {e}"))
    }

    /// The end of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn install_mariadb(&self) -> Result<(), String> {
        let install = find_program("mariadb-install-db", None, &["/usr/bin/mariadb-install-db"])?;
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if running_as_root() {
            cmd.arg("--user=root");
        }
        let status = cmd
            .stdout(self.log()?)
            .stderr(self.log()?)
            .status()
            .map_err(|e| format!("mariadb-install-db: {e}"))?;
        if !status.success() {
            return Err(format!("mariadb-install-db failed ({status}):\n{}", self.log_tail()));
        }
        Ok(())
    }

    /// `initdb` of a data directory owned by the `postgres` user (when running as root).
    fn install_postgres(&self) -> Result<(), String> {
        let initdb = self.bin.with_file_name("initdb");
        let data = self.dir.join("data");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
        self.as_postgres_user(&mut cmd)?;
        let status = cmd
            .stdout(self.log()?)
            .stderr(self.log()?)
            .status()
            .map_err(|e| format!("{}: {e}", initdb.display()))?;
        if !status.success() {
            return Err(format!("initdb failed ({status}):\n{}", self.log_tail()));
        }
        Ok(())
    }

    /// With TLS: the certificate files in the data directory, readable by the server alone
    /// (it refuses a key others can read). With a password: connections over TCP must use TLS
    /// and the password (`scram-sha-256`); the unix socket stays open without one.
    fn secure_postgres(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.dir.join("data");
        if let Some(tls) = &self.security.tls {
            for (from, to) in [(&tls.cert, "server.crt"), (&tls.key, "server.key"), (&tls.ca, "root.crt")] {
                fs::copy(from, data.join(to)).map_err(|e| format!("copy {}: {e}", from.display()))?;
                fs::set_permissions(data.join(to), fs::Permissions::from_mode(0o600))
                    .map_err(|e| e.to_string())?;
            }
            if running_as_root() {
                let status = Command::new("chown")
                    .args(["postgres:postgres", "server.crt", "server.key", "root.crt"])
                    .current_dir(&data)
                    .status()
                    .map_err(|e| format!("chown: {e}"))?;
                if !status.success() {
                    return Err("cannot hand the certificate files to the postgres user".into());
                }
            }
        }
        if self.security.password.is_some() {
            let hba = data.join("pg_hba.conf");
            let old = fs::read_to_string(&hba).map_err(|e| format!("{}: {e}", hba.display()))?;
            let tcp = if self.security.tls.is_some() { "hostssl" } else { "host" };
            let new = format!(
                "local all all trust\n{tcp} all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 reject\n{old}"
            );
            fs::write(&hba, new).map_err(|e| format!("{}: {e}", hba.display()))?;
        }
        Ok(())
    }

    /// Runs SQL through `psql` on the server's unix socket as the `postgres` superuser.
    pub fn postgres_sql(&self, sql: &str) -> Result<String, String> {
        assert_eq!(self.kind, Kind::Postgres, "postgres_sql on a {} server", self.kind.name());
        let psql = self.bin.with_file_name("psql");
        let mut cmd = Command::new(&psql);
        cmd.arg("-h").arg(&self.dir).args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"]);
        cmd.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        self.as_postgres_user(&mut cmd)?;
        let out = cmd.output().map_err(|e| format!("{}: {e}", psql.display()))?;
        if !out.status.success() {
            return Err(format!("psql -c {sql:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// As root, `cmd` runs as the `postgres` user, which gets the data directory (PostgreSQL
    /// refuses to run as root).
    fn as_postgres_user(&self, cmd: &mut Command) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        if !running_as_root() {
            return Ok(());
        }
        let id = |flag: &str| -> Result<u32, String> {
            let out = Command::new("id").args([flag, "postgres"]).output().map_err(|e| format!("id: {e}"))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| "no `postgres` user to run PostgreSQL as".to_string())
        };
        let (uid, gid) = (id("-u")?, id("-g")?);
        for path in [self.dir.clone(), self.dir.join("server.log")] {
            if path.exists() {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
        }
        cmd.uid(uid).gid(gid);
        Ok(())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        let p = self.port;
        match self.kind {
            Kind::Redis | Kind::RedisClusterNode => {
                let tls = self.security.tls.as_ref().filter(|_| self.kind == Kind::Redis);
                let plain_port = if tls.is_some() { 0 } else { p };
                cmd.args([
                    "--port",
                    &plain_port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&self.dir);
                if let Some(tls) = tls {
                    let auth_clients = if self.security.client_certs { "yes" } else { "no" };
                    cmd.args(["--tls-port", &p.to_string(), "--tls-auth-clients", auth_clients])
                        .arg("--tls-cert-file")
                        .arg(&tls.cert)
                        .arg("--tls-key-file")
                        .arg(&tls.key)
                        .arg("--tls-ca-cert-file")
                        .arg(&tls.ca);
                }
                if let Some(password) = self.security.password.as_ref().filter(|_| self.kind == Kind::Redis) {
                    cmd.args(["--requirepass", password]);
                }
                if self.kind == Kind::RedisClusterNode {
                    cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                        .args(["--cluster-port", &self.peer_port.to_string()]);
                }
            }
            Kind::Etcd => {
                let client = self.url();
                let peer = format!("http://127.0.0.1:{}", self.peer_port);
                cmd.arg("--data-dir")
                    .arg(self.dir.join("etcd"))
                    .args(["--name", "default", "--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client, "--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .arg(format!("--initial-cluster=default={peer}"));
                if let Some(tls) = &self.security.tls {
                    cmd.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key);
                    cmd.arg("--trusted-ca-file").arg(&tls.ca);
                    if self.security.client_certs {
                        cmd.arg("--client-cert-auth");
                    }
                }
            }
            Kind::MariaDb => {
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", self.dir.join("data").display()))
                    .arg(format!("--socket={}", self.socket().display()))
                    .arg(format!("--pid-file={}", self.dir.join("mariadbd.pid").display()))
                    .arg(format!("--port={p}"))
                    .args(["--bind-address=127.0.0.1", "--skip-log-bin", "--innodb-buffer-pool-size=32M"]);
                if let Some(tls) = &self.security.tls {
                    cmd.arg(format!("--ssl-cert={}", tls.cert.display()))
                        .arg(format!("--ssl-key={}", tls.key.display()))
                        .arg(format!("--ssl-ca={}", tls.ca.display()));
                }
                if running_as_root() {
                    cmd.arg("--user=root");
                }
            }
            Kind::Postgres => {
                use std::os::unix::process::CommandExt;
                cmd.arg("-D")
                    .arg(self.dir.join("data"))
                    .args(["-p", &p.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                    .args(["-c", "shared_buffers=16MB", "-c", "max_connections=60", "-k"])
                    .arg(&self.dir);
                if self.security.tls.is_some() {
                    cmd.args([
                        "-c",
                        "ssl=on",
                        "-c",
                        "ssl_cert_file=server.crt",
                        "-c",
                        "ssl_key_file=server.key",
                    ])
                    .args(["-c", "ssl_ca_file=root.crt"]);
                }
                cmd.process_group(0);
                // Checked in `install_postgres`, which ran first.
                let _ = self.as_postgres_user(&mut cmd);
            }
        }
        cmd
    }

    /// Starts the process and waits until it answers.
    fn launch(&mut self) -> Result<(), String> {
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(self.log()?)
            .stderr(self.log()?)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        let mut last;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "{} exited at start ({status}):\n{}",
                    self.bin.display(),
                    self.log_tail()
                ));
            }
            // A TLS server (MariaDB's greeting is plain either way) answers once it listens.
            let tls_only = self.security.tls.is_some() && matches!(self.kind, Kind::Redis | Kind::Etcd);
            let probed = if tls_only {
                TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500))
                    .map(drop)
                    .map_err(|e| format!("connect: {e}"))
            } else {
                probe(self.kind, self.addr(), Duration::from_millis(500))
            };
            match probed {
                Ok(()) => break,
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "{} not ready within {READY_WITHIN:?} ({last}):\n{}",
                    self.kind.name(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.kind == Kind::MariaDb {
            self.mariadb_sql("CREATE DATABASE IF NOT EXISTS test")?;
        }
        if self.kind == Kind::Etcd && self.security.password.is_some() {
            self.enable_etcd_auth(deadline)?;
        }
        if self.kind == Kind::Postgres {
            // The postmaster answers before the database accepts sessions (recovery).
            let ready = self.bin.with_file_name("pg_isready");
            loop {
                let ok = Command::new(&ready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    self.stop();
                    return Err(format!("postgres not accepting sessions within {READY_WITHIN:?}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Creates etcd's `root` user with the password of [`Security::password`] and enables
    /// authentication, with `etcdctl` (retried until `deadline`: the member has just started).
    /// After a restart, when authentication is on already, nothing is changed.
    fn enable_etcd_auth(&self, deadline: Instant) -> Result<(), String> {
        let etcdctl = find_program("etcdctl", None, &["/usr/bin/etcdctl"])?;
        let root = format!("root:{}", self.security.password.clone().unwrap_or_default());
        let run = |user: Option<&str>, args: &[&str]| -> Result<(), String> {
            let mut cmd = Command::new(&etcdctl);
            cmd.env("ETCDCTL_API", "3").args(["--endpoints", &self.url(), "--dial-timeout", "2s"]);
            if let Some(tls) = &self.security.tls {
                cmd.arg("--cacert").arg(&tls.ca);
                if let Some((cert, key)) = &tls.client {
                    cmd.arg("--cert").arg(cert).arg("--key").arg(key);
                }
            }
            if let Some(user) = user {
                cmd.args(["--user", user]);
            }
            let out = cmd.args(args).stdin(Stdio::null()).output().map_err(|e| format!("etcdctl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        loop {
            let tried = run(Some(&root), &["auth", "enable"]).or_else(|_| {
                run(None, &["user", "add", &root, "--interactive=false"])?;
                run(None, &["auth", "enable"])
            });
            match tried {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(format!("etcd auth enable: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs SQL through the `mariadb` client on the server's unix socket; returns its output
    /// (tab-separated, no column names).
    pub fn mariadb_sql(&self, sql: &str) -> Result<String, String> {
        assert_eq!(self.kind, Kind::MariaDb, "mariadb_sql on a {} server", self.kind.name());
        let client = find_program("mariadb", None, &["/usr/bin/mariadb"])?;
        let out = Command::new(client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", sql])
            .output()
            .map_err(|e| format!("mariadb: {e}"))?;
        if !out.status.success() {
            return Err(format!("mariadb -e {sql:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// One minimal request of `kind`'s protocol, answered within `within`.
fn probe(kind: Kind, addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&addr, within).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
    let request: &[u8] = match kind {
        Kind::Redis | Kind::RedisClusterNode => b"PING\r\n",
        Kind::Etcd => b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        Kind::MariaDb => b"",
        // SSLRequest: length 8, code 80877103; answered with one byte, `S` or `N`.
        Kind::Postgres => &[0, 0, 0, 8, 4, 210, 22, 47],
    };
    s.write_all(request).map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        s.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
        let n = s.read(&mut buf).map_err(|e| format!("no answer: {e}"))?;
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        let done = match kind {
            Kind::Redis | Kind::RedisClusterNode => answer.ends_with(b"\r\n"),
            Kind::Etcd => text.contains("\"health\""),
            // A handshake packet: 3-byte length, sequence 0, protocol version 10.
            Kind::MariaDb => answer.len() >= 5,
            Kind::Postgres => !answer.is_empty(),
        };
        if done || n == 0 {
            let ok = match kind {
                Kind::Redis | Kind::RedisClusterNode => {
                    text.starts_with("+PONG") || text.starts_with("-NOAUTH")
                }
                Kind::Etcd => text.contains("\"health\":\"true\""),
                Kind::MariaDb => answer.len() >= 5 && answer[3] == 0 && answer[4] == 10,
                Kind::Postgres => matches!(answer.first(), Some(b'S' | b'N')),
            };
            return if ok { Ok(()) } else { Err(format!("unexpected answer {text:?}")) };
        }
    }
}

#[cfg(test)]
mod tests;
