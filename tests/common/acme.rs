//! Pebble, Let's Encrypt's test CA, and its challenge test server as a
//! DNS server, both on loopback, for the custom domains' tests. Every
//! name resolves to 127.0.0.1 (where the test gateway listens) unless a
//! test says otherwise; Pebble validates HTTP-01 on the gateway's HTTP
//! port and TLS-ALPN-01 on its apps' HTTPS port.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// The external account binding Pebble requires (its key base64url).
const EAB_KID: &str = "capsule-test";
const EAB_HMAC_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

/// A free loopback port (taken and let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a loopback port is free")
}

/// Pebble's ports and files, chosen before the mesh starts (whose
/// settings name them); started with [`Plan::start`] once the gateway's
/// ports are known.
pub struct Plan {
    dir: tempfile::TempDir,
    listen: u16,
    management: u16,
    dns: u16,
    dns_management: u16,
    /// The CA that signed Pebble's own HTTPS certificate.
    pub ca_file: PathBuf,
    /// A DNS-01 hook that writes TXT records into the test DNS server.
    pub dns_hook: PathBuf,
    pub https_addr: SocketAddr,
}

impl Plan {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca_key = KeyPair::generate().expect("a key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("a CA certificate");
        let leaf_key = KeyPair::generate().expect("a key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf parameters")
            .signed_by(&leaf_key, &ca)
            .expect("a leaf certificate");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write the CA");
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("write the certificate");
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).expect("write the key");
        let dns_management = free_port();
        let dns_hook = dir.path().join("dns-hook");
        std::fs::write(
            &dns_hook,
            format!(
                "#!/bin/sh\n# <present|cleanup> <record> <value>\nset -eu\n\
                 case \"$1\" in\n\
                 present) curl -sf -d \"{{\\\"host\\\":\\\"$2.\\\",\\\"value\\\":\\\"$3\\\"}}\" http://127.0.0.1:{dns_management}/set-txt ;;\n\
                 cleanup) curl -sf -d \"{{\\\"host\\\":\\\"$2.\\\"}}\" http://127.0.0.1:{dns_management}/clear-txt ;;\n\
                 esac\n"
            ),
        )
        .expect("write the hook");
        std::fs::set_permissions(&dns_hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("make the hook executable");
        Self {
            dir,
            listen: free_port(),
            management: free_port(),
            dns: free_port(),
            dns_management,
            ca_file,
            dns_hook,
            https_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }
    }

    /// The settings of a mesh that orders from this Pebble and serves
    /// apps over TLS on `https_addr`.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "DEPLOY_ACME_DIRECTORY",
                format!("https://127.0.0.1:{}/dir", self.listen),
            ),
            ("DEPLOY_ACME_CA_FILE", self.ca_file.display().to_string()),
            ("DEPLOY_ACME_DNS_HOOK", self.dns_hook.display().to_string()),
            ("DEPLOY_ACME_DNS_ZONE", "acme.capsule.test".to_owned()),
            ("DEPLOY_ACME_EMAIL", "ops@capsule.test".to_owned()),
            // Pebble requires external account binding, as some CAs do.
            ("DEPLOY_ACME_EAB_KID", EAB_KID.to_owned()),
            ("DEPLOY_ACME_EAB_HMAC_KEY", EAB_HMAC_KEY.to_owned()),
            ("DEPLOY_ACME_CHALLENGE_DELAY_MS", "1200".to_owned()),
            ("GATEWAY_APPS_HTTPS_ADDR", self.https_addr.to_string()),
            ("DEPLOY_RESERVED_DOMAINS", "api.capsule.test".to_owned()),
        ]
    }

    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// the apps' HTTPS port, issuing certificates valid `validity`.
    pub async fn start(self, http_port: u16, validity: Duration) -> Pebble {
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", self.listen),
                "managementListenAddress": format!("127.0.0.1:{}", self.management),
                "certificate": self.dir.path().join("cert.pem"),
                "privateKey": self.dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": self.https_addr.port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": true,
                "externalAccountMACKeys": { EAB_KID: EAB_HMAC_KEY },
                "certificateValidityPeriod": validity.as_secs(),
            }
        });
        let config_file = self.dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("write Pebble's config");
        let log =
            |name: &str| std::fs::File::create(self.dir.path().join(name)).map_or_else(|_| Stdio::null(), Stdio::from);
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{}", self.dns)])
            .args(["-management", &format!("127.0.0.1:{}", self.dns_management)])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs (scripts/prerequisites installs Debian's pebble)");
        let pebble = Command::new("pebble")
            .args(["-config"])
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble runs (scripts/prerequisites installs Debian's pebble)");
        let running = Pebble {
            plan: self,
            processes: vec![pebble, challtestsrv],
        };
        for port in [
            running.plan.listen,
            running.plan.management,
            running.plan.dns_management,
        ] {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "Pebble did not listen on {port}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        running
    }
}

/// Pebble and its DNS server, stopped when dropped.
pub struct Pebble {
    pub plan: Plan,
    processes: Vec<Child>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Pebble {
    /// `name` resolves to `address` from now on.
    pub async fn add_a(&self, name: &str, address: &str) {
        let body = serde_json::json!({ "host": format!("{name}."), "addresses": [address] });
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/add-a", self.plan.dns_management))
            .body(body.to_string())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the DNS server takes the record");
    }

    /// `name` is a CNAME to `target` from now on.
    pub async fn set_cname(&self, name: &str, target: &str) {
        let body = serde_json::json!({ "host": format!("{name}."), "target": format!("{target}.") });
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/set-cname", self.plan.dns_management))
            .body(body.to_string())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the DNS server takes the record");
    }

    /// The root that signs what this Pebble issues (PEM).
    pub async fn issuer_root(&self) -> String {
        let ca =
            reqwest::Certificate::from_pem(&std::fs::read(&self.plan.ca_file).expect("the CA file")).expect("a PEM CA");
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .expect("a client")
            .get(format!("https://127.0.0.1:{}/roots/0", self.plan.management))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("Pebble's management port answers")
            .text()
            .await
            .expect("a PEM root")
    }

    /// What Pebble logged, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.plan.dir.path().join("pebble.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.plan.dir.path()
    }
}

/// A client that trusts `root` and reaches every name at `addr`.
pub fn client_for(root: &str, names: &[&str], addr: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).expect("a PEM root"))
        .redirect(reqwest::redirect::Policy::none());
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder.build().expect("a client")
}
