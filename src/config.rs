//! Configuration from the environment.
//!
//! Each service with a database reads one prefix (`AUTH`, `PROJECT`,
//! `DEPLOY`):
//!
//! | variable | default |
//! |---|---|
//! | `<SVC>_DB_HOST`, `<SVC>_DB_PORT` | `localhost`, `5432` |
//! | `<SVC>_DB_USER`, `<SVC>_DB_PASSWORD` | `usecapsule_<svc>`, `usecapsule_dev_password` |
//! | `<SVC>_DB_NAME`, `<SVC>_DB_SCHEMA` | `usecapsule_<svc>`, `public` |
//! | `<SVC>_DB_POOL_SIZE` | twice the cores, at least 4 |
//! | `<SVC>_DB_CONNECT_TIMEOUT_SECS` | `5` |
//! | `<SVC>_DB_STATEMENT_TIMEOUT_MS` | `30000`; `0` for none (migrations never have one) |
//! | `<SVC>_DATABASE_URL` | unset; when set it overrides the parts above |
//! | `<SVC>_MIGRATE_ON_START` | `true` |
//!
//! Every service also reads its listen address, `<SVC>_GRPC_ADDR`
//! (`0.0.0.0:5005N`), and the gateway `GATEWAY_HTTP_ADDR` (`0.0.0.0:8080`)
//! and `AUTH_SERVICE_URL`, `PROJECT_SERVICE_URL`, `DEPLOY_SERVICE_URL`
//! (`http://127.0.0.1:<port>`). Shutdown: `CAPSULE_DRAIN_DELAY_MS` (`500`),
//! how long health reports NOT_SERVING before the listener stops accepting;
//! `CAPSULE_SHUTDOWN_GRACE_SECS` (`8`), how long in-flight calls may take to
//! finish after that.
//!
//! A value that does not parse fails start-up with an error naming the
//! variable. Passwords and URLs are held as secrets and never printed.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};

/// One of the four Capsule services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKind {
    Auth,
    Project,
    Deploy,
    Gateway,
}

impl ServiceKind {
    /// All four, in start-up order.
    pub const ALL: [ServiceKind; 4] = [Self::Auth, Self::Project, Self::Deploy, Self::Gateway];
    /// The three that own a database.
    pub const WITH_DATABASE: [ServiceKind; 3] = [Self::Auth, Self::Project, Self::Deploy];

    /// Lowercase name, as used on the command line and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Project => "project",
            Self::Deploy => "deploy",
            Self::Gateway => "gateway",
        }
    }

    /// Prefix of the service's environment variables.
    pub fn env_prefix(self) -> &'static str {
        match self {
            Self::Auth => "AUTH",
            Self::Project => "PROJECT",
            Self::Deploy => "DEPLOY",
            Self::Gateway => "GATEWAY",
        }
    }

    /// The fully-qualified name of the service's gRPC API.
    pub fn grpc_service_name(self) -> &'static str {
        match self {
            Self::Auth => "capsule.auth.v1.AuthService",
            Self::Project => "capsule.project.v1.ProjectService",
            Self::Deploy => "capsule.deploy.v1.DeployService",
            Self::Gateway => "capsule.gateway.v1.GatewayService",
        }
    }

    /// The default gRPC port (DESIGN.md).
    pub fn default_grpc_port(self) -> u16 {
        match self {
            Self::Gateway => 50050,
            Self::Auth => 50051,
            Self::Project => 50052,
            Self::Deploy => 50053,
        }
    }

    /// The variable that holds the service's gRPC listen address.
    pub fn grpc_addr_variable(self) -> String {
        format!("{}_GRPC_ADDR", self.env_prefix())
    }

    /// The variable other services read to find this one.
    pub fn service_url_variable(self) -> String {
        format!("{}_SERVICE_URL", self.env_prefix())
    }

    /// Default database name and role, after the original design.
    pub fn default_database_name(self) -> String {
        format!("usecapsule_{}", self.name())
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| format!("unknown service {s:?}: expected auth, project, deploy or gateway"))
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value} is not valid: {reason}")]
pub struct ConfigError {
    /// The environment variable to fix.
    pub variable: String,
    /// The value as given, or `<redacted>` for secrets.
    pub value: String,
    /// What a valid value looks like.
    pub reason: String,
}

/// Where configuration values come from: the process environment in
/// production, a map in tests.
pub trait Source {
    /// The value of `name`, if set. An empty value counts as unset.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Source for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name).filter(|value| !value.is_empty())
    }
}

/// The value of `variable` parsed as `T`, or `default` when unset; an
/// error naming the variable and what a valid value looks like otherwise.
pub fn parse_or<T: FromStr>(source: &dyn Source, variable: &str, default: T, expected: &str) -> Result<T, ConfigError> {
    match source.get(variable) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|_| ConfigError {
            variable: variable.to_owned(),
            value: format!("{raw:?}"),
            reason: expected.to_owned(),
        }),
    }
}

/// A positive whole number (its type bounds it), or `default` when unset.
pub fn positive<T: FromStr + PartialOrd + Default>(
    source: &dyn Source,
    variable: &str,
    default: T,
) -> Result<T, ConfigError> {
    let value = parse_or(source, variable, default, "expected a positive whole number")?;
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError {
            variable: variable.to_owned(),
            value: format!("{:?}", source.get(variable).unwrap_or_default()),
            reason: "expected a positive whole number".to_owned(),
        })
    }
}

/// true/1/yes/on or false/0/no/off, or `default` when unset.
pub fn parse_bool(source: &dyn Source, variable: &str, default: bool) -> Result<bool, ConfigError> {
    match source.get(variable).map(|raw| raw.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Some(v) => Err(ConfigError {
            variable: variable.to_owned(),
            value: format!("{v:?}"),
            reason: "expected true or false".to_owned(),
        }),
    }
}

fn default_pool_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    (cores * 2).max(4)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// How a service reaches its database.
#[derive(Clone)]
pub struct DbConfig {
    pub service: ServiceKind,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
    pub name: String,
    pub schema: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// `statement_timeout` of the service's pooled connections; zero for
    /// none. Migrations run on their own connections, without it.
    pub statement_timeout: Duration,
    /// `<SVC>_DATABASE_URL`, which wins over the parts when set.
    pub url_override: Option<SecretString>,
    pub migrate_on_start: bool,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("service", &self.service)
            .field("target", &self.target())
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl DbConfig {
    /// Reads the service's database variables from the process environment.
    pub fn from_env(service: ServiceKind) -> Result<Self, ConfigError> {
        Self::from_source(service, &ProcessEnv)
    }

    /// Reads the service's database variables from `source`.
    pub fn from_source(service: ServiceKind, source: &dyn Source) -> Result<Self, ConfigError> {
        let prefix = service.env_prefix();
        let var = |suffix: &str| format!("{prefix}_{suffix}");
        let default_name = service.default_database_name();

        let host = source.get(&var("DB_HOST")).unwrap_or_else(|| "localhost".to_owned());
        let port = parse_or(
            source,
            &var("DB_PORT"),
            5432u16,
            "expected a port number from 1 to 65535",
        )?;
        if port == 0 {
            return Err(ConfigError {
                variable: var("DB_PORT"),
                value: "\"0\"".to_owned(),
                reason: "expected a port number from 1 to 65535".to_owned(),
            });
        }
        let user = source.get(&var("DB_USER")).unwrap_or_else(|| default_name.clone());
        let password = SecretString::from(
            source
                .get(&var("DB_PASSWORD"))
                .unwrap_or_else(|| "usecapsule_dev_password".to_owned()),
        );
        let name = source.get(&var("DB_NAME")).unwrap_or_else(|| default_name.clone());
        let schema = source.get(&var("DB_SCHEMA")).unwrap_or_else(|| "public".to_owned());
        if !is_identifier(&schema) {
            return Err(ConfigError {
                variable: var("DB_SCHEMA"),
                value: format!("{schema:?}"),
                reason: "expected a lowercase SQL identifier such as public".to_owned(),
            });
        }
        let pool_size = parse_or(
            source,
            &var("DB_POOL_SIZE"),
            default_pool_size(),
            "expected a number from 1 to 1000",
        )?;
        if !(1..=1000).contains(&pool_size) {
            return Err(ConfigError {
                variable: var("DB_POOL_SIZE"),
                value: format!("\"{pool_size}\""),
                reason: "expected a number from 1 to 1000".to_owned(),
            });
        }
        let connect_timeout = Duration::from_secs(parse_or(
            source,
            &var("DB_CONNECT_TIMEOUT_SECS"),
            5u64,
            "expected a whole number of seconds",
        )?);
        let statement_timeout = Duration::from_millis(parse_or(
            source,
            &var("DB_STATEMENT_TIMEOUT_MS"),
            30_000u64,
            "expected a whole number of milliseconds (0 for none)",
        )?);
        let url_variable = var("DATABASE_URL");
        let url_override = match source.get(&url_variable) {
            None => None,
            Some(raw) => {
                let parsed = url::Url::parse(&raw).map_err(|err| ConfigError {
                    variable: url_variable.clone(),
                    value: "<redacted>".to_owned(),
                    reason: format!("expected postgres://user:password@host:port/database ({err})"),
                })?;
                if !matches!(parsed.scheme(), "postgres" | "postgresql") || parsed.host_str().is_none() {
                    return Err(ConfigError {
                        variable: url_variable,
                        value: "<redacted>".to_owned(),
                        reason: "expected postgres://user:password@host:port/database".to_owned(),
                    });
                }
                Some(SecretString::from(raw))
            }
        };
        let migrate_on_start = parse_bool(source, &var("MIGRATE_ON_START"), true)?;

        Ok(Self {
            service,
            host,
            port,
            user,
            password,
            name,
            schema,
            pool_size,
            connect_timeout,
            statement_timeout,
            url_override,
            migrate_on_start,
        })
    }

    /// The libpq connection URL, password included.
    pub fn connection_url(&self) -> SecretString {
        if let Some(url) = &self.url_override {
            // Name the connections (pg_stat_activity, query metrics) unless
            // the URL already does.
            return match url::Url::parse(url.expose_secret()) {
                Ok(mut parsed) if !parsed.query_pairs().any(|(key, _)| key == "application_name") => {
                    parsed
                        .query_pairs_mut()
                        .append_pair("application_name", &format!("capsule-{}", self.service));
                    SecretString::from(parsed.to_string())
                }
                _ => url.clone(),
            };
        }
        let mut url = url::Url::parse("postgres://localhost/").expect("a constant URL parses");
        // Setting parts of a postgres URL cannot fail for these values: the
        // host was given by the operator and is passed through as is.
        let _ = url.set_host(Some(&self.host));
        let _ = url.set_port(Some(self.port));
        let _ = url.set_username(&self.user);
        let _ = url.set_password(Some(self.password.expose_secret()));
        url.set_path(&self.name);
        url.query_pairs_mut()
            .append_pair("connect_timeout", &self.connect_timeout.as_secs().max(1).to_string())
            .append_pair("application_name", &format!("capsule-{}", self.service))
            .append_pair("options", &format!("-csearch_path={}", self.schema));
        SecretString::from(url.to_string())
    }

    /// `user@host:port/database`, without the password: safe for logs.
    pub fn target(&self) -> String {
        match &self.url_override {
            Some(url) => redact_url(url.expose_secret()),
            None => format!("{}@{}:{}/{}", self.user, self.host, self.port, self.name),
        }
    }

    /// The variables an operator changes to point the service elsewhere.
    pub fn variables_hint(&self) -> String {
        let p = self.service.env_prefix();
        if self.url_override.is_some() {
            format!("{p}_DATABASE_URL")
        } else {
            format!("{p}_DB_HOST, {p}_DB_PORT, {p}_DB_USER, {p}_DB_PASSWORD, {p}_DB_NAME (or {p}_DATABASE_URL)")
        }
    }
}

/// A database URL with the password removed, for logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => format!(
            "{}@{}:{}{}",
            url.username(),
            url.host_str().unwrap_or("?"),
            url.port().unwrap_or(5432),
            url.path()
        ),
        Err(_) => "<unparsable url>".to_owned(),
    }
}

/// Listen addresses and shutdown timing of one service process.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub drain_delay: Duration,
    pub shutdown_grace: Duration,
    /// TLS for this process's listeners (see [`crate::tls`]); `None`: plain.
    pub tls: Option<crate::tls::ServerTls>,
    /// `CAPSULE_METRICS_ADDR`: where the process serves `/metrics` on a
    /// listener of its own; `None`, on each gRPC port.
    pub metrics_addr: Option<SocketAddr>,
}

impl ServeConfig {
    pub fn from_env(service: ServiceKind) -> Result<Self, ConfigError> {
        Self::from_source(service, &ProcessEnv)
    }

    pub fn from_source(service: ServiceKind, source: &dyn Source) -> Result<Self, ConfigError> {
        let default_addr = SocketAddr::from(([0, 0, 0, 0], service.default_grpc_port()));
        Ok(Self {
            grpc_addr: parse_or(
                source,
                &service.grpc_addr_variable(),
                default_addr,
                "expected an address such as 0.0.0.0:50051",
            )?,
            drain_delay: Duration::from_millis(parse_or(
                source,
                "CAPSULE_DRAIN_DELAY_MS",
                500u64,
                "expected a whole number of milliseconds",
            )?),
            shutdown_grace: Duration::from_secs(parse_or(
                source,
                "CAPSULE_SHUTDOWN_GRACE_SECS",
                8u64,
                "expected a whole number of seconds",
            )?),
            tls: crate::tls::ServerTls::from_source(source)?,
            metrics_addr: source
                .get("CAPSULE_METRICS_ADDR")
                .map(|value| {
                    value.trim().parse().map_err(|_| ConfigError {
                        variable: "CAPSULE_METRICS_ADDR".to_owned(),
                        value,
                        reason: "expected an address such as 0.0.0.0:9090".to_owned(),
                    })
                })
                .transpose()?,
        })
    }
}

/// Where a service finds the others (`AUTH_SERVICE_URL`,
/// `PROJECT_SERVICE_URL`, `DEPLOY_SERVICE_URL`).
#[derive(Clone, Debug)]
pub struct ServiceUrls {
    pub auth: String,
    pub project: String,
    pub deploy: String,
}

impl ServiceUrls {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let service_url = |kind: ServiceKind| -> Result<String, ConfigError> {
            let variable = kind.service_url_variable();
            let value = source
                .get(&variable)
                .unwrap_or_else(|| format!("http://127.0.0.1:{}", kind.default_grpc_port()));
            match url::Url::parse(&value) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(value),
                _ => Err(ConfigError {
                    variable,
                    value: format!("{value:?}"),
                    reason: "expected a URL such as http://127.0.0.1:50051".to_owned(),
                }),
            }
        };
        Ok(Self {
            auth: service_url(ServiceKind::Auth)?,
            project: service_url(ServiceKind::Project)?,
            deploy: service_url(ServiceKind::Deploy)?,
        })
    }
}

/// What a service needs to reach and trust the others: their addresses and
/// the shared secrets.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub services: ServiceUrls,
    pub secrets: crate::auth::Secrets,
}

impl Mesh {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            services: ServiceUrls::from_source(source)?,
            secrets: crate::auth::Secrets::from_source(source),
        })
    }

    /// The key set that verifies this mesh's tokens and secrets.
    pub fn key_set(&self) -> anyhow::Result<std::sync::Arc<crate::auth::KeySet>> {
        crate::auth::KeySet::from_auth_service(&self.services.auth, &self.secrets)
    }
}

/// The gateway's HTTP address and the services it fronts.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub http_addr: SocketAddr,
    pub services: ServiceUrls,
}

impl GatewayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: parse_or(
                source,
                "GATEWAY_HTTP_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 8080)),
                "expected an address such as 0.0.0.0:8080",
            )?,
            services: ServiceUrls::from_source(source)?,
        })
    }
}

/// Where the app of the project with host label `label` is served:
/// `CAPSULE_APPS_URL` with `{label}` replaced (default
/// `http://{label}.localhost:8080`, the gateway's HTTP port with
/// `GATEWAY_APPS_DOMAIN=localhost`).
pub fn app_url(label: &str) -> String {
    static TEMPLATE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            ProcessEnv
                .get("CAPSULE_APPS_URL")
                .filter(|template| template.contains("{label}"))
                .unwrap_or_else(|| "http://{label}.localhost:8080".to_owned())
        })
        .replace("{label}", label)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn source(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn defaults_follow_the_original_naming() {
        let cfg = DbConfig::from_source(ServiceKind::Auth, &source(&[])).unwrap();
        assert_eq!(cfg.target(), "usecapsule_auth@localhost:5432/usecapsule_auth");
        assert_eq!(cfg.schema, "public");
        assert!(cfg.migrate_on_start);
        let url = cfg.connection_url();
        assert!(
            url.expose_secret()
                .starts_with("postgres://usecapsule_auth:usecapsule_dev_password@localhost:5432/usecapsule_auth?")
        );
    }

    #[test]
    fn a_bad_port_names_the_variable() {
        let err = DbConfig::from_source(ServiceKind::Project, &source(&[("PROJECT_DB_PORT", "54x")])).unwrap_err();
        assert_eq!(err.variable, "PROJECT_DB_PORT");
        assert!(
            err.to_string().starts_with("PROJECT_DB_PORT=\"54x\" is not valid"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_url_is_reported_without_its_secret() {
        let err = DbConfig::from_source(
            ServiceKind::Deploy,
            &source(&[("DEPLOY_DATABASE_URL", "mysql://u:hunter2@h/db")]),
        )
        .unwrap_err();
        assert_eq!(err.variable, "DEPLOY_DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_url_overrides_the_parts_and_is_redacted_in_logs() {
        let cfg = DbConfig::from_source(
            ServiceKind::Auth,
            &source(&[
                ("AUTH_DATABASE_URL", "postgres://me:hunter2@db.internal:6432/auth"),
                ("AUTH_DB_HOST", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(
            cfg.connection_url().expose_secret(),
            "postgres://me:hunter2@db.internal:6432/auth?application_name=capsule-auth"
        );
        assert_eq!(cfg.target(), "me@db.internal:6432/auth");
        let named = DbConfig::from_source(
            ServiceKind::Auth,
            &source(&[("AUTH_DATABASE_URL", "postgres://db/auth?application_name=mine")]),
        )
        .unwrap();
        assert_eq!(
            named.connection_url().expose_secret(),
            "postgres://db/auth?application_name=mine"
        );
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn bad_schema_pool_size_and_flags_are_refused() {
        for (variable, value) in [
            ("AUTH_DB_SCHEMA", "Robert'); DROP TABLE users;--"),
            ("AUTH_DB_POOL_SIZE", "0"),
            ("AUTH_DB_POOL_SIZE", "lots"),
            ("AUTH_MIGRATE_ON_START", "maybe"),
            ("AUTH_DB_CONNECT_TIMEOUT_SECS", "-1"),
        ] {
            let err = DbConfig::from_source(ServiceKind::Auth, &source(&[(variable, value)])).unwrap_err();
            assert_eq!(err.variable, variable, "{value}");
        }
    }

    #[test]
    fn listen_addresses_and_service_urls_are_checked() {
        let err =
            ServeConfig::from_source(ServiceKind::Deploy, &source(&[("DEPLOY_GRPC_ADDR", "localhost")])).unwrap_err();
        assert_eq!(err.variable, "DEPLOY_GRPC_ADDR");
        let cfg = ServeConfig::from_source(ServiceKind::Deploy, &source(&[])).unwrap();
        assert_eq!(cfg.grpc_addr.port(), 50053);

        let err = GatewayConfig::from_source(&source(&[("AUTH_SERVICE_URL", "auth:50051")])).unwrap_err();
        assert_eq!(err.variable, "AUTH_SERVICE_URL");
        let cfg = GatewayConfig::from_source(&source(&[])).unwrap();
        assert_eq!(cfg.services.project, "http://127.0.0.1:50052");
    }

    #[test]
    fn positive_numbers_are_bounded_by_their_type() {
        let env = source(&[("A", "0"), ("B", "-3"), ("C", "3000000000"), ("D", "many"), ("E", "42")]);
        for variable in ["A", "B", "C", "D"] {
            let err = positive::<i32>(&env, variable, 1).unwrap_err();
            assert_eq!(err.variable, variable);
            assert!(err.reason.contains("positive whole number"), "{err}");
        }
        assert_eq!(positive::<i32>(&env, "E", 1).unwrap(), 42);
        assert_eq!(positive::<u64>(&env, "UNSET", 7).unwrap(), 7);
        assert!(parse_bool(&source(&[("F", "maybe")]), "F", false).is_err());
    }

    #[test]
    fn service_names_parse() {
        assert_eq!("deploy".parse::<ServiceKind>().unwrap(), ServiceKind::Deploy);
        assert!("billing".parse::<ServiceKind>().unwrap_err().contains("expected auth"));
    }
}
