//! [`provide`]: the one place that gives a test its MySQL/MariaDB, PostgreSQL, Redis or etcd
//! server.
//!
//! 1. The service's variable (`DISTLOCK_TEST_MYSQL_URL`, `DISTLOCK_TEST_POSTGRES_URL`,
//!    `DISTLOCK_TEST_REDIS_URL`, `DISTLOCK_TEST_ETCD_ENDPOINTS`, see [`env`](mod@crate::env))
//!    is set: that server, as `cargo xtask test` sets them.
//! 2. Unset, with this crate's `docker` feature, and a Docker engine answers a ping
//!    (`DOCKER_HOST`, else the default socket): a container started through
//!    `testcontainers`, one per service and test binary, shared by its tests and kept alive by
//!    the [`Provided`] guard each holds (see [`docker`](mod@docker) for images, the host-network
//!    mode and the clean-up). A container that fails to start fails the test: it is not a
//!    missing service.
//! 3. Unset, with the `docker` feature, and no engine answers: `Err`, which the harness hands
//!    on, so the case is skipped or, under `DISTLOCK_REQUIRE_SERVICES=1`, fails (see
//!    [`require_or_skip`](crate::require_or_skip)).
//! 4. Unset, without the `docker` feature: the default local URL of [`env`](mod@crate::env), as
//!    before containers existed; a harness probing a server that is not there gets an error,
//!    with the same outcome.
//!
//! A process whose tests got containers hands their URLs to the processes it starts for the
//! [cross-process cases](crate::process) through [`child_env`], so both reach one server.

#[cfg(feature = "docker")]
pub mod docker;

use std::sync::{Arc, Mutex};

use crate::env;

/// A service the backends' integration tests talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// MySQL or MariaDB, with a database `test` and user `root` without password.
    MySql,
    /// PostgreSQL.
    Postgres,
    /// Redis.
    Redis,
    /// etcd (v3 API), a single member.
    Etcd,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 4] = [Service::MySql, Service::Postgres, Service::Redis, Service::Etcd];

    /// The variable naming this service's server (its URL, or etcd's endpoint list).
    pub fn url_env(self) -> &'static str {
        match self {
            Service::MySql => env::MYSQL_URL_ENV,
            Service::Postgres => env::POSTGRES_URL_ENV,
            Service::Redis => env::REDIS_URL_ENV,
            Service::Etcd => env::ETCD_ENDPOINTS_ENV,
        }
    }

    /// The variable overriding this service's container image (`name:tag`).
    pub fn image_env(self) -> &'static str {
        match self {
            Service::MySql => env::MYSQL_IMAGE_ENV,
            Service::Postgres => env::POSTGRES_IMAGE_ENV,
            Service::Redis => env::REDIS_IMAGE_ENV,
            Service::Etcd => env::ETCD_IMAGE_ENV,
        }
    }

    /// The server a test reaches when nothing else is set up: the local default URL.
    #[cfg_attr(feature = "docker", allow(dead_code))]
    fn default_url(self) -> String {
        match self {
            Service::MySql => env::mysql_url(),
            Service::Postgres => env::postgres_url(),
            Service::Redis => env::redis_url(),
            Service::Etcd => env::etcd_endpoints(),
        }
    }
}

/// A test's way to its service: the URL, and for a container the guard that keeps it up.
#[derive(Clone, Debug)]
pub struct Provided {
    url: String,
    origin: Origin,
    /// The container, shared by every test of the binary that asked for this service.
    _guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Where a [`Provided`] service comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The service's variable names it.
    Env,
    /// A container started for this test binary.
    Container,
    /// Nothing named it and containers are not built in (no `docker` feature): the local
    /// default, perhaps not running.
    Default,
}

impl Provided {
    /// The service's URL (for etcd, its comma-separated endpoint list).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the service comes from.
    pub fn origin(&self) -> Origin {
        self.origin
    }
}

/// The URLs of the containers this process started, as `(variable, url)`, for child processes.
static STARTED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The service variables a child process needs to reach this process's containers (empty
/// when no container was started).
pub fn child_env() -> Vec<(String, String)> {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The variable's value, if set and not empty.
fn set_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Gives a test its `service`: see the [module](self) for the order of the ways. `Err` says
/// why there is none, for [`require_or_skip`](crate::require_or_skip).
///
/// # Panics
///
/// When a Docker engine answers but the service's container does not start: a broken
/// image or a slow machine is a failure to see, not a service to skip.
pub async fn provide(service: Service) -> Result<Provided, String> {
    if let Some(url) = set_var(service.url_env()) {
        return Ok(Provided { url, origin: Origin::Env, _guard: None });
    }
    #[cfg(feature = "docker")]
    {
        if let Err(e) = docker::engine_answers().await {
            return Err(format!("{} is unset and no Docker engine answers ({e})", service.url_env()));
        }
        match docker::provide(service).await {
            Ok((url, guard)) => {
                let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
                if !started.iter().any(|(k, _)| k == service.url_env()) {
                    started.push((service.url_env().to_string(), url.clone()));
                }
                Ok(Provided { url, origin: Origin::Container, _guard: Some(guard) })
            }
            Err(e) => panic!("{service:?}: Docker answers, but the container did not start: {e}"),
        }
    }
    #[cfg(not(feature = "docker"))]
    Ok(Provided { url: service.default_url(), origin: Origin::Default, _guard: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_its_own_variables() {
        let urls: std::collections::HashSet<_> = Service::ALL.iter().map(|s| s.url_env()).collect();
        let images: std::collections::HashSet<_> = Service::ALL.iter().map(|s| s.image_env()).collect();
        assert_eq!(urls.len(), Service::ALL.len());
        assert_eq!(images.len(), Service::ALL.len());
        assert!(images.iter().all(|v| v.starts_with("DISTLOCK_TEST_") && v.ends_with("_IMAGE")));
    }
}
