//! What the network scenarios share: a real `muster-relay` process on a free loopback
//! port, scratch directories, and an organisation of real client engines around it.

use muster_driver::Connection;
use muster_engine::{Engine, EngineError, LinkError};
use muster_proto::Profile;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("client engine: {0}")]
    Engine(#[from] EngineError),
    #[error("relay connection: {0}")]
    Net(#[from] muster_net::NetError),
    #[error("relay: {0}")]
    Link(#[from] LinkError),
    #[error("{0}")]
    Setup(String),
}

/// A directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Result<Self, HarnessError> {
        Self::new_in(&std::env::temp_dir(), label)
    }

    /// A scratch directory under `parent`.
    pub fn new_in(parent: &Path, label: &str) -> Result<Self, HarnessError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = parent.join(format!(
            "muster-bench-{}-{}-{label}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A workspace binary built next to this one; built first when missing, so that
/// `cargo run -p muster-bench` works from a clean checkout.
pub fn sibling_binary(name: &str) -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| HarnessError::Setup("benchmark executable has no directory".into()))?;
    // Test executables live one level further down, in deps/.
    let candidates = [dir.join(name), dir.join("..").join(name)];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Ok(found.clone());
    }
    let release = dir.ends_with("release") || dir.ends_with("release/deps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("muster-bench: building {name} first");
    let mut build = Command::new(cargo);
    build.args(["build", "-p", name]);
    if release {
        build.arg("--release");
    }
    let status = build.status()?;
    match candidates.iter().find(|p| p.exists()) {
        Some(found) if status.success() => Ok(found.clone()),
        _ => Err(HarnessError::Setup(format!(
            "{name} is not built and `cargo build -p {name}` failed"
        ))),
    }
}

/// A running relay process; killed on drop.
pub struct RelayProcess {
    child: Child,
    pub addr: String,
    pub fingerprint: String,
    pub bootstrap_token: String,
}

impl RelayProcess {
    /// Starts `muster-relay serve` on a free loopback port with its data in `data`, with
    /// per-device rate limits lifted so the load generator is not throttled.
    pub fn start(data: &Path) -> Result<Self, HarnessError> {
        Self::start_with(data, &[])
    }

    /// [`RelayProcess::start`] with more `serve` options (a shared database, say).
    pub fn start_with(data: &Path, extra: &[&str]) -> Result<Self, HarnessError> {
        let mut child = Command::new(sibling_binary("muster-relay")?)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .args([
                "--requests-per-sec",
                "1000000",
                "--posts-per-sec",
                "1000000",
                "--unauthenticated-per-address",
                "100000",
                "--anonymous-per-sec",
                "1000000",
            ])
            // MUSTER_BENCH_RELAY_LOG (a tracing filter) looks inside a run that fails.
            .env(
                "MUSTER_LOG",
                std::env::var("MUSTER_BENCH_RELAY_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut fingerprint, mut token) = (None, None, None);
        while addr.is_none() || fingerprint.is_none() || token.is_none() {
            let Some(line) = lines.next().transpose()? else {
                let _ = child.kill();
                return Err(HarnessError::Setup(
                    "muster-relay exited before it was ready".into(),
                ));
            };
            if let Some(a) = line.strip_prefix("muster-relay listening on ") {
                addr = Some(a.trim().to_string());
            } else if let Some(f) = line.strip_prefix("certificate fingerprint: ") {
                fingerprint = Some(f.trim().to_string());
            } else if let Some(t) = line.strip_prefix("bootstrap token: ") {
                token = Some(t.trim().to_string());
            }
        }
        // Keep draining stdout so the relay never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Ok(Self {
            child,
            addr: addr.unwrap_or_default(),
            fingerprint: fingerprint.unwrap_or_default(),
            bootstrap_token: token.unwrap_or_default(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in bytes, from /proc.
pub fn resident_bytes(pid: u32) -> Result<u64, HarnessError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| HarnessError::Setup(format!("no VmRSS for process {pid}")))
}

/// Devices [`Org::enrol_many`] enrols at once.
const ENROL_CONCURRENCY: usize = 32;

/// An organisation on a fresh relay: an admin device and enrolled members, each a real
/// client engine with its own store.
/// Whether the device stores the harness opens are encrypted (SQLCipher, a fresh random
/// key each), as every real device's is; off unless a scenario's `--encrypted` asks.
pub static ENCRYPTED_STORES: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The key of the stores the harness encrypts: one random key for the run (each real
/// device has its own; what is measured is SQLCipher's work, which is the same).
pub fn store_key() -> Option<&'static muster_keystore::StoreKey> {
    static KEY: std::sync::OnceLock<muster_keystore::StoreKey> = std::sync::OnceLock::new();
    ENCRYPTED_STORES
        .load(std::sync::atomic::Ordering::Relaxed)
        .then(|| KEY.get_or_init(muster_keystore::StoreKey::generate))
}

/// Opens (creating) the device store in `home`, encrypted when [`ENCRYPTED_STORES`] says so.
pub fn open_engine(home: &Path) -> Result<Engine, HarnessError> {
    Ok(Engine::open_with_key(home, store_key())?)
}

pub struct Org {
    pub scratch: Scratch,
    pub relay: RelayProcess,
    /// More relays on the same shared database, if any.
    pub others: Vec<RelayProcess>,
    pub admin: Engine,
    pub admin_conn: Connection,
}

fn profile(name: &str) -> Profile {
    Profile {
        display_name: name.to_string(),
        ..Default::default()
    }
}

impl Org {
    /// The address of relay `index` (counting around all of them).
    pub fn relay_addr(&self, index: usize) -> &str {
        let all = 1 + self.others.len();
        match index % all {
            0 => &self.relay.addr,
            i => &self.others[i - 1].addr,
        }
    }

    /// Starts a relay and creates the organisation with its first admin, `admin`.
    pub async fn create(label: &str) -> Result<Self, HarnessError> {
        Self::create_on(label, &[], 1).await
    }

    /// [`Org::create`] on `relays` relays started with `serve` options `extra` (the same
    /// shared database for each, when there are several).
    pub async fn create_on(
        label: &str,
        extra: &[&str],
        relays: usize,
    ) -> Result<Self, HarnessError> {
        let scratch = Scratch::new(label)?;
        let relay = RelayProcess::start_with(&scratch.path().join("relay"), extra)?;
        let others = (1..relays.max(1))
            .map(|i| RelayProcess::start_with(&scratch.path().join(format!("relay{i}")), extra))
            .collect::<Result<Vec<_>, _>>()?;
        let mut admin = open_engine(&scratch.path().join("admin"))?;
        let setup = muster_engine::NewOrg {
            relay: &relay.addr,
            fingerprint: &relay.fingerprint,
            token: &relay.bootstrap_token,
            org_name: "Bench Org",
            user: "admin",
            profile: profile("Admin"),
        };
        muster_driver::create_org(&mut admin, &setup).await?;
        let admin_conn = muster_driver::connect(&mut admin).await?;
        Ok(Self {
            scratch,
            relay,
            others,
            admin,
            admin_conn,
        })
    }

    /// Invites, enrols and approves a user with one device; returns its engine.
    pub async fn enrol(&mut self, user: &str) -> Result<Engine, HarnessError> {
        let dir = self.scratch.path().to_path_buf();
        self.enrol_in(&dir, user).await
    }

    /// [`Org::enrol`] with the device's store under `dir`.
    pub async fn enrol_in(&mut self, dir: &Path, user: &str) -> Result<Engine, HarnessError> {
        let code = self
            .admin
            .create_invite(&self.admin_conn, user, 3600)
            .await?;
        let mut engine = open_engine(&dir.join(user))?;
        muster_driver::join(&mut engine, &code, profile(user)).await?;
        self.admin
            .approve(
                &self.admin_conn,
                user,
                None,
                muster_engine::AccountKind::Person,
            )
            .await?;
        // The first connection picks up the certificate and uploads KeyPackages.
        muster_driver::connect(&mut engine).await?.close().await;
        Ok(engine)
    }

    /// [`Org::enrol`] for many users, their stores under the scratch directory: the admin
    /// invites and approves one after another while the devices' own round trips overlap.
    pub async fn enrol_many(&mut self, users: &[String]) -> Result<Vec<Engine>, HarnessError> {
        let dir = self.scratch.path().to_path_buf();
        let mut codes = Vec::with_capacity(users.len());
        for user in users {
            codes.push(
                self.admin
                    .create_invite(&self.admin_conn, user, 3600)
                    .await?,
            );
        }
        let dir = &dir;
        let mut engines = bounded(
            ENROL_CONCURRENCY,
            users
                .iter()
                .zip(codes)
                .map(|(user, code)| async move {
                    let mut engine = open_engine(&dir.join(user))?;
                    muster_driver::join(&mut engine, &code, profile(user)).await?;
                    Ok(engine)
                })
                .collect(),
        )
        .await?;
        for user in users {
            self.admin
                .approve(
                    &self.admin_conn,
                    user,
                    None,
                    muster_engine::AccountKind::Person,
                )
                .await?;
        }
        // The first connection picks up the certificate and uploads KeyPackages.
        bounded(
            ENROL_CONCURRENCY,
            engines
                .iter_mut()
                .map(|engine| async move {
                    muster_driver::connect(engine).await?.close().await;
                    Ok(())
                })
                .collect(),
        )
        .await?;
        Ok(engines)
    }

    /// Creates a group of the admin and `members`, and has every member join it; returns
    /// the group's id (hex).
    pub async fn group(
        &mut self,
        name: &str,
        members: &mut [Engine],
    ) -> Result<String, HarnessError> {
        self.group_with_others(name, members, &[]).await
    }

    /// Like [`Org::group`], with `others` (users whose devices never process the Welcome:
    /// protocol-level devices) in the group too.
    pub async fn group_with_others(
        &mut self,
        name: &str,
        members: &mut [Engine],
        others: &[String],
    ) -> Result<String, HarnessError> {
        let mut users: Vec<String> = members
            .iter()
            .map(|e| e.whoami().map(|w| w.user))
            .collect::<Result<_, _>>()?;
        users.extend_from_slice(others);
        let group = self
            .admin
            .create_group(&self.admin_conn, name, &users, false)
            .await?;
        for engine in members.iter_mut() {
            let report =
                muster_driver::online(engine, async |engine, conn| engine.sync(conn).await).await?;
            if !report.joined_groups.contains(&group.id) {
                return Err(HarnessError::Setup(format!(
                    "a member did not join {name}: {}",
                    report.problems.join("; ")
                )));
            }
        }
        Ok(group.id)
    }
}

/// Runs `jobs` at most `limit` at a time on the current task, keeping their results in
/// order: their round trips to the relay overlap.
pub async fn bounded<T, F>(limit: usize, jobs: Vec<F>) -> Result<Vec<T>, HarnessError>
where
    F: std::future::Future<Output = Result<T, HarnessError>>,
{
    let mut out = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    loop {
        let batch: Vec<F> = jobs.by_ref().take(limit.max(1)).collect();
        if batch.is_empty() {
            return Ok(out);
        }
        for result in join_all(batch).await {
            out.push(result?);
        }
    }
}

/// Polls every future to completion on the current task.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
