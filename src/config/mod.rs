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
//! | `<SVC>_DB_BATCHING` | `true`: queued calls of one kind run as one statement |
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
//!
//! This layer reads and checks settings; it builds nothing from them (TLS
//! configs are built by [`crate::tls`], key sets by [`crate::auth`]).

mod database;
mod mesh;
mod secrets;
mod serve;
mod service;
mod source;
pub(crate) mod tls;

pub use database::{DbConfig, redact_url};
pub use mesh::{GatewayConfig, Mesh, ServiceUrls, app_url};
pub use secrets::Secrets;
pub use serve::ServeConfig;
pub use service::ServiceKind;
pub use source::{ConfigError, ProcessEnv, Source, networks, parse_bool, parse_or, paths, positive};
pub use tls::{CA_FILE, CERT_FILE, CLIENT_CA_FILE, KEY_FILE, ServerTls};

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

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
    fn a_loopback_server_is_reached_without_tls_unless_told_otherwise() {
        let url = |pairs: &[(&str, &str)]| {
            DbConfig::from_source(ServiceKind::Project, &source(pairs))
                .unwrap()
                .connection_url()
                .expose_secret()
                .to_owned()
        };
        let plain = |url: &str| url.contains("sslmode=disable");
        // The parts' default host, loopback addresses and socket folders.
        assert!(plain(&url(&[])));
        for given in [
            "postgres://u@127.0.0.1:5432/p",
            "postgres://u@127.0.0.2/p",
            "postgres://u@[::1]/p",
            "postgresql://u@LOCALHOST/p",
            "postgres://u@db/p?host=/var/run/postgresql",
            "postgres://u@db.internal/p?hostaddr=127.0.0.1",
        ] {
            assert!(plain(&url(&[("PROJECT_DATABASE_URL", given)])), "{given}");
        }
        // Another host (from the parts or the URL), one of several that is
        // not loopback, an address or a later `host` that leads away, a
        // word on TLS in the URL or in libpq's environment: libpq decides
        // as before.
        assert!(!plain(&url(&[("PROJECT_DB_HOST", "db.internal")])));
        for (given, env) in [
            ("postgres://u@db.internal/p", None),
            ("postgres://u@10.0.0.5/p", None),
            ("postgres://u@127.0.0.1/p?hostaddr=10.0.0.5", None),
            ("postgres://u@db.internal/p?hostaddr=", None),
            ("postgres://u@localhost/p?host=localhost,db.internal", None),
            ("postgres://u@x/p?host=localhost,db.internal&hostaddr=127.0.0.1,", None),
            ("postgres://u@x/p?host=localhost&host=db.internal", None),
            ("postgres://u@localhost/p?sslmode=require", None),
            ("postgres://u@localhost/p?ssl=true", None),
            ("postgres://u@localhost/p?requiressl=1", None),
            ("postgres://u@localhost/p?sslrootcert=system", None),
            ("postgres://u@localhost/p?service=capsule", None),
            ("postgres://u@localhost/p", Some(("PGSSLMODE", "verify-full"))),
            ("postgres://u@localhost/p", Some(("PGSERVICE", "capsule"))),
            ("postgres://u@localhost/p", Some(("PGHOSTADDR", "10.0.0.5"))),
            ("postgres://u@localhost/p", Some(("PGSSLROOTCERT", "system"))),
        ] {
            let mut pairs = vec![("PROJECT_DATABASE_URL", given)];
            pairs.extend(env);
            let got = url(&pairs);
            assert!(!plain(&got), "{given} {env:?}: {got}");
        }
        // Pairs that all stay on this host.
        assert!(plain(&url(&[(
            "PROJECT_DATABASE_URL",
            "postgres://u@x/p?host=db.internal,localhost&hostaddr=127.0.0.1,"
        )])));
        assert!(
            url(&[("PROJECT_DATABASE_URL", "postgres://u@localhost/p?sslmode=require")])
                .ends_with("sslmode=require&application_name=capsule-project")
        );
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
