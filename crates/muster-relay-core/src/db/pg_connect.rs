//! Connecting to PostgreSQL. The relay's TLS key and every queued message cross this link,
//! so it is encrypted whenever it leaves the machine: with `sslmode=require` in the URL
//! the server's certificate is checked against the CA certificate in the PEM file named by
//! `PGSSLROOTCERT` (libpq's name for it), host name included; without it only a server on
//! this machine (a Unix socket, `localhost`, a loopback address) is reached.

use super::DbError;
use postgres::config::{Host, SslMode};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The environment variable naming the CA certificate (PEM) the server's must chain to.
pub const CA_VARIABLE: &str = "PGSSLROOTCERT";

/// How long a connection may take to open, or a link stay silent, before it is given up.
const LINK_TIMEOUT: Duration = Duration::from_secs(20);

/// How a connection to the database is made.
#[derive(Debug, PartialEq)]
enum Link {
    /// In the clear, to this machine only.
    Local,
    /// Over TLS, checked against this CA certificate.
    Tls(PathBuf),
}

/// A connection to the database at `url`, with the CA named by [`CA_VARIABLE`].
pub fn client(url: &str) -> Result<postgres::Client, DbError> {
    client_with(url, std::env::var_os(CA_VARIABLE).map(PathBuf::from))
}

/// A connection to the database at `url`, over TLS checked against `ca` if it asks.
pub fn client_with(url: &str, ca: Option<PathBuf>) -> Result<postgres::Client, DbError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| DbError::Link(format!("the database URL does not parse: {e}")))?;
    // A link that goes silent (a dropped route, a partition) is given up within about
    // half a minute, not TCP's two hours, so the server ends the transaction and frees
    // the writer's lock a stuck relay held. Settings in the URL are kept.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(LINK_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(LINK_TIMEOUT);
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(LINK_TIMEOUT);
    }
    match plan(&config, ca)? {
        Link::Local => Ok(config.connect(postgres::NoTls)?),
        Link::Tls(ca) => Ok(config.connect(tls(&ca)?)?),
    }
}

fn plan(config: &postgres::Config, ca: Option<PathBuf>) -> Result<Link, DbError> {
    let wants_tls = !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer);
    if wants_tls {
        return match ca {
            Some(ca) => Ok(Link::Tls(ca)),
            None => Err(DbError::Link(format!(
                "sslmode=require needs the CA certificate that signed the database server's: \
                 set {CA_VARIABLE} to its PEM file"
            ))),
        };
    }
    if let Some(remote) = remote_host(config) {
        return Err(DbError::Link(format!(
            "the database at {remote} is not on this machine and the link would not be \
             encrypted: add sslmode=require to the URL and set {CA_VARIABLE} to the PEM file \
             of the CA certificate that signed the server's"
        )));
    }
    Ok(Link::Local)
}

/// The first host the configuration names that is not this machine.
fn remote_host(config: &postgres::Config) -> Option<String> {
    let addresses = config.get_hostaddrs();
    if !addresses.is_empty() {
        return addresses
            .iter()
            .find(|a| !a.is_loopback())
            .map(|a| a.to_string());
    }
    config.get_hosts().iter().find_map(|host| match host {
        Host::Unix(_) => None,
        Host::Tcp(name) => {
            let local = name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            (!local).then(|| name.clone())
        }
    })
}

fn tls(ca: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
    let unreadable = |e: &dyn std::fmt::Display| DbError::Link(format!("{}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).map_err(|e| unreadable(&e))? {
        let certificate = certificate.map_err(|e| unreadable(&e))?;
        roots.add(certificate).map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(DbError::Link(format!(
            "{} holds no certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Link(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(url: &str, ca: Option<&str>) -> Result<Link, DbError> {
        plan(&url.parse().unwrap(), ca.map(PathBuf::from))
    }

    #[test]
    fn a_database_on_this_machine_may_be_reached_in_the_clear() {
        for url in [
            "postgres://muster@localhost/muster",
            "postgres://muster@127.0.0.1:5433/muster",
            "postgres://muster@[::1]/muster",
            "host=/run/postgresql user=muster dbname=muster",
            "postgresql:///muster?host=/tmp",
        ] {
            assert_eq!(plan_for(url, None).unwrap(), Link::Local, "{url}");
        }
    }

    #[test]
    fn a_database_elsewhere_is_refused_without_tls() {
        for url in [
            "postgres://muster@db.example.org/muster",
            "postgres://muster@10.0.0.7/muster?sslmode=prefer",
            "host=localhost,db.example.org user=muster",
            "host=localhost hostaddr=10.0.0.7 user=muster",
        ] {
            let refused = plan_for(url, Some("/etc/ca.pem")).unwrap_err().to_string();
            assert!(refused.contains("sslmode=require"), "{url}: {refused}");
        }
    }

    #[test]
    fn tls_is_always_checked_against_a_ca() {
        let url = "postgres://muster@db.example.org/muster?sslmode=require";
        assert_eq!(
            plan_for(url, Some("/etc/ca.pem")).unwrap(),
            Link::Tls(PathBuf::from("/etc/ca.pem"))
        );
        let refused = plan_for(url, None).unwrap_err().to_string();
        assert!(refused.contains(CA_VARIABLE), "{refused}");
    }

    #[test]
    fn a_tls_link_is_checked_against_the_ca_and_the_host_name() {
        let (Some(server), Some(ca), Some(other_ca)) = (
            crate::db::postgres::testing::server(),
            std::env::var_os("MUSTER_TEST_POSTGRES_CA").map(PathBuf::from),
            std::env::var_os("MUSTER_TEST_POSTGRES_OTHER_CA").map(PathBuf::from),
        ) else {
            eprintln!(
                "SKIPPED: no PostgreSQL with TLS (run the tests through tests/with-postgres)"
            );
            return;
        };
        let tls_url = format!("{server}?sslmode=require");
        let mut client = client_with(&tls_url, Some(ca.clone())).unwrap();
        let encrypted: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(encrypted, "the link is not encrypted");
        let refused = client_with(&tls_url, Some(other_ca)).err().unwrap();
        assert!(
            refused.to_string().to_lowercase().contains("certificate"),
            "{refused}"
        );
        // The certificate names 127.0.0.1 only.
        let by_name = tls_url.replace("127.0.0.1", "localhost");
        assert_ne!(by_name, tls_url);
        let refused = client_with(&by_name, Some(ca)).err().unwrap();
        assert!(
            refused.to_string().to_lowercase().contains("certificate"),
            "{refused}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("muster-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let refused = tls(&empty).err().unwrap().to_string();
        assert!(refused.contains("empty.pem"), "{refused}");
        let missing = tls(&dir.join("missing.pem")).err().unwrap().to_string();
        assert!(missing.contains("missing.pem"), "{missing}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
