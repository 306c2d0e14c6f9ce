//! Services in containers, through `testcontainers` (the re-export of
//! `testcontainers-modules`, so there is one `Image` trait): the MariaDB, PostgreSQL and Redis
//! modules, and etcd as a `GenericImage`.
//!
//! - **Images**: `mariadb:11.3`, `postgres:11-alpine`, `redis:5.0` (the modules' defaults) and
//!   `quay.io/coreos/etcd:v3.5.17`; `DISTLOCK_TEST_MYSQL_IMAGE`, `DISTLOCK_TEST_POSTGRES_IMAGE`,
//!   `DISTLOCK_TEST_REDIS_IMAGE` and `DISTLOCK_TEST_ETCD_IMAGE` override them (`name:tag`).
//! - **Network**: by default each container's port is published on 127.0.0.1 only, on a port
//!   Docker picks. `DISTLOCK_TEST_DOCKER_NETWORK=host` runs the containers on the host's
//!   network instead (for an engine without a bridge, such as the one of
//!   `cargo xtask test --docker`): the test picks a free loopback port and the server is told to
//!   listen on it, on 127.0.0.1 only.
//! - **Sharing**: one container per service per test binary, started by the first test that
//!   asks, on a runtime of its own (the tests' runtimes end with their tests).
//! - **Clean-up**: a static is never dropped, so each container gets a reaper: a `sh` that
//!   waits for this process's end (the close of a pipe) and then runs `docker rm -f -v` on it.
//!   Every container is labelled [`LABEL`] (and [`PID_LABEL`]), so that what a killed run
//!   leaves behind can be found: `cargo xtask test --docker` removes every labelled container
//!   of its engine when it is done.

use std::collections::HashMap;
use std::io::Write;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use testcontainers_modules::mariadb::Mariadb;
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::redis::Redis;
use testcontainers_modules::testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers_modules::testcontainers::core::client::docker_client_instance;
use testcontainers_modules::testcontainers::core::logs::LogFrame;
use testcontainers_modules::testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{
    ContainerAsync, ContainerRequest, GenericImage, Image, ImageExt,
};
use tokio::sync::OnceCell;

use super::Service;
use crate::env;

/// The label every container started here carries (value `1`).
pub const LABEL: &str = "org.distlock.testkit";
/// The label naming the process that started a container (its pid).
pub const PID_LABEL: &str = "org.distlock.testkit.pid";

/// The etcd image when `DISTLOCK_TEST_ETCD_IMAGE` is unset.
pub const ETCD_IMAGE: &str = "quay.io/coreos/etcd:v3.5.17";

/// How long a container gets to report itself ready (MariaDB's first start initialises its
/// data directory).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the engine gets to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A started container, its URL, and its reaper.
struct Running {
    url: String,
    _container: Box<dyn std::any::Any + Send + Sync>,
    /// The reaper's stdin: closed when this process ends, which sets the reaper off.
    _reaper: Option<Mutex<ChildStdin>>,
}

/// The runtime every Docker call runs on: the client's connections outlive any one test.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lock-testkit-docker")
            .enable_all()
            .build()
            .expect("a runtime for the Docker client")
    })
}

/// Whether a Docker engine answers a ping (`DOCKER_HOST`, else the default socket), once per
/// process. Never panics: no engine is an answer.
pub async fn engine_answers() -> Result<(), String> {
    static ANSWER: OnceCell<Result<(), String>> = OnceCell::const_new();
    ANSWER
        .get_or_init(|| async {
            let ping = async {
                let docker = docker_client_instance().await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
                }
            };
            runtime().spawn(ping).await.unwrap_or_else(|e| Err(format!("the ping task failed: {e}")))
        })
        .await
        .clone()
}

/// The service's container URL and the guard keeping it up, the container started by the
/// first caller of the process; `Err` when it does not start. Call only once
/// [`engine_answers`].
pub(super) async fn provide(
    service: Service,
) -> Result<(String, Arc<dyn std::any::Any + Send + Sync>), String> {
    static CONTAINERS: [OnceCell<Arc<Running>>; 4] =
        [OnceCell::const_new(), OnceCell::const_new(), OnceCell::const_new(), OnceCell::const_new()];
    let index = Service::ALL.iter().position(|s| *s == service).expect("a listed service");
    let running = CONTAINERS[index]
        .get_or_try_init(|| async {
            runtime()
                .spawn(start(service))
                .await
                .map_err(|e| format!("the start task failed: {e}"))?
                .map(Arc::new)
        })
        .await?;
    Ok((running.url.clone(), running.clone() as Arc<dyn std::any::Any + Send + Sync>))
}

/// `name:tag` split at the tag's colon (a registry's port is not a tag).
pub fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') && !name.is_empty() => (name, tag),
        _ => (image, "latest"),
    }
}

/// The image override of `service`, as `(name, tag)`.
fn image_override(service: Service) -> Option<(String, String)> {
    let image = std::env::var(service.image_env()).ok().filter(|v| !v.trim().is_empty())?;
    let (name, tag) = split_image(image.trim());
    Some((name.to_string(), tag.to_string()))
}

/// Whether the containers run on the host's network (`DISTLOCK_TEST_DOCKER_NETWORK=host`).
pub fn host_network() -> bool {
    std::env::var(env::DOCKER_NETWORK_ENV).is_ok_and(|v| v == "host")
}

/// The container port of `service` when the network is not the host's.
fn container_port(service: Service) -> u16 {
    match service {
        Service::MySql => 3306,
        Service::Postgres => 5432,
        Service::Redis => 6379,
        Service::Etcd => 2379,
    }
}

/// Starts the container of `service` (on [`runtime`]).
async fn start(service: Service) -> Result<Running, String> {
    let host = host_network();
    let port = if host { crate::ports::free_port()? } else { container_port(service) };
    let image = image_override(service);
    let (url_of, container): (fn(u16) -> String, _) = match service {
        Service::MySql => {
            let mut req = apply_image(Mariadb::default(), image);
            if host {
                req = req.with_cmd(mariadb_cmd(port)).with_ready_conditions(vec![
                    WaitFor::message_on_stderr("ready for connections"),
                    WaitFor::message_on_stderr(format!("port: {port}")),
                ]);
            }
            (|p| format!("mysql://root@127.0.0.1:{p}/test"), run(req, service, host).await?)
        }
        Service::Postgres => {
            let mut req = apply_image(Postgres::default().with_host_auth(), image);
            if host {
                req = req.with_cmd(postgres_cmd(port)).with_ready_conditions(vec![
                    WaitFor::message_on_either_std(format!(
                        "listening on IPv4 address \"127.0.0.1\", port {port}"
                    )),
                    WaitFor::message_on_either_std("database system is ready to accept connections"),
                ]);
            }
            (
                |p| format!("postgres://postgres:postgres@127.0.0.1:{p}/postgres"),
                run(req, service, host).await?,
            )
        }
        Service::Redis => {
            let mut req = apply_image(Redis::default(), image);
            if host {
                req = req.with_cmd(redis_cmd(port));
            }
            (|p| format!("redis://127.0.0.1:{p}"), run(req, service, host).await?)
        }
        Service::Etcd => {
            let (name, tag) = image.unwrap_or_else(|| {
                let (name, tag) = split_image(ETCD_IMAGE);
                (name.to_string(), tag.to_string())
            });
            let mut generic = GenericImage::new(name, tag)
                .with_wait_for(WaitFor::message_on_stderr("ready to serve client requests"));
            if !host {
                generic = generic.with_exposed_port(2379.tcp());
            }
            let peer = if host { crate::ports::free_port()? } else { 2380 };
            let req = generic.with_cmd(etcd_cmd(port, peer, host));
            (|p| format!("http://127.0.0.1:{p}"), run(req, service, host).await?)
        }
    };
    let (container, id, mapped) = container;
    let url = url_of(if host { port } else { mapped });
    // Past the test harness's capture of `eprintln!`: which server a run used belongs in its log.
    let _ = writeln!(
        std::io::stderr(),
        "lock-testkit: {service:?} in container {} at {url}",
        &id[..id.len().min(12)]
    );
    Ok(Running { url, _container: container, _reaper: reaper(&id) })
}

/// The request for `image`, under the override's name and tag if there is one.
fn apply_image<I: Image>(image: I, name_tag: Option<(String, String)>) -> ContainerRequest<I> {
    match name_tag {
        Some((name, tag)) => image.with_name(name).with_tag(tag),
        None => image.into(),
    }
}

/// `mariadbd` on 127.0.0.1:`port` (the image's entrypoint prepares the data directory).
pub fn mariadb_cmd(port: u16) -> Vec<String> {
    vec!["mariadbd".into(), format!("--port={port}"), "--bind-address=127.0.0.1".into()]
}

/// `postgres` on 127.0.0.1:`port`, without fsync (the module's default).
pub fn postgres_cmd(port: u16) -> Vec<String> {
    ["postgres", "-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        .map(String::from)
        .to_vec()
}

/// `redis-server` on 127.0.0.1:`port`, without persistence.
pub fn redis_cmd(port: u16) -> Vec<String> {
    ["redis-server", "--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"]
        .map(String::from)
        .to_vec()
}

/// A single-member etcd: on 127.0.0.1 with the host's network, else on every interface of the
/// container (whose published port is bound to the host's 127.0.0.1).
pub fn etcd_cmd(port: u16, peer: u16, host_network: bool) -> Vec<String> {
    let listen = if host_network { "127.0.0.1" } else { "0.0.0.0" };
    vec![
        "etcd".into(),
        "--name=distlock-test".into(),
        "--data-dir=/tmp/etcd-data".into(),
        format!("--listen-client-urls=http://{listen}:{port}"),
        format!("--advertise-client-urls=http://127.0.0.1:{port}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=distlock-test=http://127.0.0.1:{peer}"),
    ]
}

type Started = (Box<dyn std::any::Any + Send + Sync>, String, u16);

/// Starts `req`, labelled, on the host's network or with its port published on 127.0.0.1
/// only; returns the container, its id and the host port of the service.
async fn run<I: Image + 'static>(
    req: ContainerRequest<I>,
    service: Service,
    host: bool,
) -> Result<Started, String> {
    let port = container_port(service);
    let req = req
        .with_label(LABEL, "1")
        .with_label(PID_LABEL, std::process::id().to_string())
        .with_startup_timeout(STARTUP_TIMEOUT);
    let req = if host {
        req.with_network("host").with_host_config_modifier(|config: &mut HostConfig| {
            config.publish_all_ports = Some(false);
            config.port_bindings = None;
        })
    } else {
        req.with_host_config_modifier(move |config: &mut HostConfig| {
            config.publish_all_ports = Some(false);
            let binding = PortBinding { host_ip: Some("127.0.0.1".into()), host_port: None };
            config.port_bindings = Some(HashMap::from([(format!("{port}/tcp"), Some(vec![binding]))]));
        })
    };
    let req = req.with_log_consumer(|_: &LogFrame| {});
    let container: ContainerAsync<I> = req.start().await.map_err(|e| e.to_string())?;
    let id = container.id().to_string();
    let mapped = if host {
        port
    } else {
        container.get_host_port_ipv4(port.tcp()).await.map_err(|e| format!("{service:?}'s port: {e}"))?
    };
    Ok((Box::new(container), id, mapped))
}

/// A `sh` that removes container `id` once this process has ended (its stdin, a pipe from
/// this process, then closes). `None` without a `docker` client on `PATH`: the container's
/// labels are then the only way to find it.
fn reaper(id: &str) -> Option<Mutex<ChildStdin>> {
    let mut child = Command::new("sh")
        .args(["-c", "read _ignored; docker rm -f -v \"$0\" >/dev/null 2>&1", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take().map(Mutex::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_at_the_tag() {
        assert_eq!(split_image("redis:7"), ("redis", "7"));
        assert_eq!(split_image("quay.io/coreos/etcd:v3.5.17"), ("quay.io/coreos/etcd", "v3.5.17"));
        assert_eq!(split_image("localhost:5000/redis"), ("localhost:5000/redis", "latest"));
        assert_eq!(split_image("localhost:5000/redis:7"), ("localhost:5000/redis", "7"));
        assert_eq!(split_image("redis"), ("redis", "latest"));
    }

    #[test]
    fn servers_on_the_host_network_listen_on_loopback_only() {
        let port = 40_001;
        let commands =
            [mariadb_cmd(port), postgres_cmd(port), redis_cmd(port), etcd_cmd(port, port + 1, true)];
        for cmd in commands {
            let line = cmd.join(" ");
            assert!(line.contains(&port.to_string()), "{line}");
            assert!(!line.contains("0.0.0.0"), "{line}");
            assert!(line.contains("127.0.0.1"), "{line}");
        }
    }
}
