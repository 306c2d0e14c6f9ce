//! Tests of the private servers: each installed kind starts, keeps or loses its data across a
//! restart as documented, and stops answering while paused. Data is written and read with the
//! servers' own command-line clients.

use super::*;

fn server(case: &str, kind: Kind) -> Option<PrivateServer> {
    crate::require_or_skip(case, PrivateServer::start(kind))
}

fn tool(case: &str, name: &str) -> Option<PathBuf> {
    crate::require_or_skip(case, find_program(name, None, &[&format!("/usr/bin/{name}")]))
}

/// Runs a client command, panicking on failure; returns its trimmed output.
fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("client runs");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// While paused the server answers nothing; after resuming it answers again.
fn check_pause(server: &PrivateServer) {
    assert!(server.responds_within(Duration::from_secs(5)), "{:?} does not answer", server.kind());
    server.pause();
    assert!(!server.responds_within(Duration::from_millis(300)), "{:?} answered while paused", server.kind());
    server.resume();
    assert!(server.responds_within(Duration::from_secs(10)), "{:?} silent after resume", server.kind());
}

#[test]
fn redis_restarts_empty_and_pauses() {
    let case = "servers::redis_restarts_empty_and_pauses";
    let Some(cli) = tool(case, "redis-cli") else { return };
    let Some(mut server) = server(case, Kind::Redis) else { return };
    let port = server.port().to_string();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_ne!(server.port(), 6379);
    assert_eq!(run(&cli, &["-p", &port, "SET", "k", "v"]), "OK");
    assert_eq!(run(&cli, &["-p", &port, "GET", "k"]), "v");
    let pid = server.pid();
    server.restart();
    assert_ne!(server.pid(), pid, "restart must run a new process");
    assert_eq!(server.port().to_string(), port);
    assert_eq!(run(&cli, &["-p", &port, "GET", "k"]), "", "redis without persistence forgets on restart");
    check_pause(&server);
}

#[test]
fn redis_cluster_node_restarts_as_the_same_node() {
    let case = "servers::redis_cluster_node_restarts_as_the_same_node";
    let Some(cli) = tool(case, "redis-cli") else { return };
    let Some(mut server) = server(case, Kind::RedisClusterNode) else { return };
    let port = server.port().to_string();
    assert!(run(&cli, &["-p", &port, "INFO", "cluster"]).contains("cluster_enabled:1"));
    // Its bus port is a free port of its own, not the port plus 10000 (often above 65535).
    assert!(
        run(&cli, &["-p", &port, "CONFIG", "GET", "cluster-port"]).ends_with(&server.peer_port.to_string())
    );
    let id = run(&cli, &["-p", &port, "CLUSTER", "MYID"]);
    assert_eq!(run(&cli, &["-p", &port, "CLUSTER", "ADDSLOTSRANGE", "0", "99"]), "OK");
    server.restart();
    assert_eq!(run(&cli, &["-p", &port, "CLUSTER", "MYID"]), id, "the cluster state survives a restart");
    let info = run(&cli, &["-p", &port, "CLUSTER", "INFO"]);
    assert!(info.contains("cluster_slots_assigned:100"), "the node forgot its slots: {info}");
    check_pause(&server);
}

#[test]
fn etcd_restart_keeps_data_and_pauses() {
    let case = "servers::etcd_restart_keeps_data_and_pauses";
    let Some(cli) = tool(case, "etcdctl") else { return };
    let Some(mut server) = server(case, Kind::Etcd) else { return };
    let endpoints = format!("--endpoints={}", server.url());
    assert_ne!(server.port(), 2379);
    assert_eq!(run(&cli, &[&endpoints, "put", "k", "v"]), "OK");
    server.restart();
    assert_eq!(server.url(), endpoints.trim_start_matches("--endpoints="));
    assert_eq!(run(&cli, &[&endpoints, "get", "k", "--print-value-only"]), "v");
    check_pause(&server);
}

#[test]
fn mariadb_restart_keeps_data_and_pauses() {
    let case = "servers::mariadb_restart_keeps_data_and_pauses";
    let Some(cli) = tool(case, "mariadb") else { return };
    let Some(mut server) = server(case, Kind::MariaDb) else { return };
    assert_ne!(server.port(), 3306);
    assert_eq!(server.url(), format!("mysql://root@127.0.0.1:{}/test", server.port()));
    server.mariadb_sql("CREATE TABLE test.t (v INT); INSERT INTO test.t VALUES (42)").unwrap();
    server.restart();
    // Over TCP, as the URL says: root without password, database `test`.
    let port = server.port().to_string();
    let tcp = ["--no-defaults", "-h127.0.0.1", "-P", &port, "-uroot", "--batch", "--skip-column-names"];
    assert_eq!(run(&cli, &[&tcp[..], &["test", "-e", "SELECT v FROM t"]].concat()), "42");
    check_pause(&server);
}

#[test]
fn drop_kills_the_server_and_removes_its_data() {
    let case = "servers::drop_kills_the_server_and_removes_its_data";
    let Some(mut server) = server(case, Kind::Redis) else { return };
    let (dir, addr) = (server.data_dir().to_owned(), server.addr());
    assert!(dir.is_dir());
    server.stop();
    assert!(!server.responds_within(Duration::from_millis(300)), "stopped server still answers");
    assert!(dir.is_dir(), "stop keeps the data directory");
    server.restart();
    server.pause();
    // A paused server is killed too.
    drop(server);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "server still listening");
}

#[test]
fn a_missing_binary_is_an_error() {
    let err = find_program("distlock-no-such-server", Some("DISTLOCK_TEST_NO_SUCH_BIN"), &[]).unwrap_err();
    assert!(err.contains("distlock-no-such-server"), "{err}");
}

/// The proxy in front of a real server: a write whose answer is dropped is applied all the
/// same, while the client only sees its connection fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_answer_still_applies_the_write() {
    let case = "servers::a_dropped_answer_still_applies_the_write";
    let Some(cli) = tool(case, "redis-cli") else { return };
    let Some(server) = tokio::task::spawn_blocking(move || server(case, Kind::Redis)).await.unwrap() else {
        return;
    };
    let proxy = crate::proxy::FaultProxy::start(server.addr()).await.unwrap();
    proxy.drop_next_answer();
    let (via_proxy, direct) = (proxy.port().to_string(), server.port().to_string());
    let cli2 = cli.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(cli2).args(["-p", &via_proxy, "SET", "k", "applied"]).output().unwrap()
    })
    .await
    .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "the client heard the answer");
    assert_eq!(proxy.answers_dropped(), 1);
    let value = tokio::task::spawn_blocking(move || run(&cli, &["-p", &direct, "GET", "k"])).await.unwrap();
    assert_eq!(value, "applied");
}
