//! Helpers for end-to-end tests: run the real `muster-relay` and `muster` binaries on
//! loopback, each device in its own temporary home, and wait on conditions with deadlines.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "muster-e2e-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            label
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running relay process.
pub struct Relay {
    pub data: PathBuf,
    pub addr: String,
    pub fingerprint: String,
    pub bootstrap_token: Option<String>,
    netns: Option<String>,
    child: Option<Child>,
}

impl Relay {
    /// Starts a relay on a free loopback port with a data directory inside `dir`.
    pub fn start(dir: &TempDir) -> Self {
        Self::start_at(dir.path().join("relay"), "127.0.0.1:0", None, &[])
    }

    /// Starts a relay on a free loopback port with data directory `data` and more `serve`
    /// options (a shared database, say).
    pub fn start_with(data: PathBuf, extra: &[&str]) -> Self {
        Self::start_at(data, "127.0.0.1:0", None, extra)
    }

    /// Starts a relay inside the network namespace `netns` (one the test created).
    pub fn start_in_netns(dir: &TempDir, netns: &str, listen: &str) -> Self {
        Self::start_at(
            dir.path().join("relay"),
            listen,
            Some(netns.to_string()),
            &[],
        )
    }

    fn start_at(data: PathBuf, listen: &str, netns: Option<String>, extra: &[&str]) -> Self {
        let mut child = in_netns(netns.as_deref(), bin("muster-relay"))
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--listen", listen])
            .args(extra)
            .env("MUSTER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start muster-relay");
        let stdout = child.stdout.take().expect("relay stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut addr, mut fingerprint, mut token) = (None, None, None);
        while addr.is_none()
            || fingerprint.is_none()
            || !(token.is_some() || Instant::now() > deadline)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left.max(Duration::from_millis(1))) else {
                break;
            };
            if let Some(a) = line.strip_prefix("muster-relay listening on ") {
                addr = Some(a.trim().to_string());
            } else if let Some(f) = line.strip_prefix("certificate fingerprint: ") {
                fingerprint = Some(f.trim().to_string());
            } else if let Some(t) = line.strip_prefix("bootstrap token: ") {
                token = Some(t.trim().to_string());
            } else if line.starts_with("organisation: ") {
                break;
            }
        }
        Self {
            data,
            addr: addr.expect("relay printed its address"),
            fingerprint: fingerprint.expect("relay printed its fingerprint"),
            bootstrap_token: token,
            netns,
            child: Some(child),
        }
    }

    /// Kills the relay with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Interrupts the relay as Ctrl-C would and waits for it to exit; returns whether it
    /// exited successfully.
    pub fn interrupt(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "could not send SIGINT to the relay");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait for relay") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills and restarts the relay on the same address and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.revive();
    }

    /// Starts a killed relay again on the same address and data directory.
    pub fn revive(&mut self) {
        let addr = self.addr.clone();
        let data = self.data.clone();
        let netns = self.netns.take();
        *self = Self::start_at(data, &addr, netns, &[]);
    }

    /// Kills and restarts the relay on the same address and data directory with more
    /// `serve` options.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill();
        let addr = self.addr.clone();
        let data = self.data.clone();
        let netns = self.netns.take();
        *self = Self::start_at(data, &addr, netns, extra);
    }

    /// Runs `muster-relay` with other arguments against this relay's data directory.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(bin("muster-relay"))
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .output()
            .expect("run muster-relay")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The SQLCipher store at `path`, opened with `key`.
pub fn open_encrypted(
    path: &std::path::Path,
    key: &muster_keystore::StoreKey,
) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).expect("open store");
    db.pragma_update(None, "key", key.sqlcipher_pragma().as_str())
        .expect("store key");
    db.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    db
}

/// One device: a `muster` home directory.
#[derive(Clone)]
pub struct Device {
    pub name: String,
    pub home: PathBuf,
    /// The network namespace its commands run in; `None` for the test's own.
    pub netns: Option<String>,
    /// Environment variables its commands get (a store passphrase, say).
    pub env: Vec<(String, String)>,
}

/// A command for `program`, run inside `netns` when one is given.
pub fn in_netns(netns: Option<&str>, program: PathBuf) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

impl Device {
    /// A device whose store is encrypted with a key file of its own, kept outside its
    /// home (as a server's would be).
    pub fn new(dir: &TempDir, name: &str) -> Self {
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("key directory");
        let key_file = keys.join(format!("{name}.key"));
        Self {
            name: name.to_string(),
            home: dir.path().join(name),
            netns: None,
            env: vec![(
                "MUSTER_KEY_FILE".to_string(),
                key_file.display().to_string(),
            )],
        }
    }

    /// This device without a key file: its store's key comes from whatever else its
    /// environment gives (a passphrase, say).
    pub fn without_key_file(mut self) -> Self {
        self.env.retain(|(n, _)| n != "MUSTER_KEY_FILE");
        self
    }

    /// The value of `name` in this device's commands' environment.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The key this device's store is encrypted with, from its key file.
    pub fn store_key(&self) -> muster_keystore::StoreKey {
        let file = self
            .env_var("MUSTER_KEY_FILE")
            .expect("the device's store has a key file");
        muster_keystore::KeyFile::load(std::path::Path::new(file), &self.home)
            .expect("the device's key file")
    }

    /// This device's store opened directly, as a test looking inside it (or an attacker
    /// holding its key) would.
    pub fn open_store(&self) -> rusqlite::Connection {
        open_encrypted(&self.home.join("muster.db"), &self.store_key())
    }

    /// This device with `name` set to `value` in its commands' environment.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// A device whose commands run inside the network namespace `netns`.
    pub fn in_netns(dir: &TempDir, name: &str, netns: &str) -> Self {
        Self {
            netns: Some(netns.to_string()),
            ..Self::new(dir, name)
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = in_netns(self.netns.as_deref(), bin("muster"));
        cmd.arg("--home").arg(&self.home);
        for inherited in ["MUSTER_HOME", "MUSTER_PASSPHRASE", "MUSTER_KEY_FILE"] {
            cmd.env_remove(inherited);
        }
        cmd.envs(self.env.iter().map(|(n, v)| (n, v)));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run muster")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}: `muster {}` failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "{}: `muster {}` should have failed but printed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a `--json` command and parses one object per line.
    pub fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = args.to_vec();
        full.push("--json");
        self.ok(&full)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// Texts of the text messages in a group, oldest first.
    pub fn texts(&self, group: &str) -> Vec<String> {
        self.json(&["read", group, "--limit", "10000"])
            .into_iter()
            .filter(|m| m["kind"] == "text")
            .map(|m| m["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The member handles of a group as this device sees it.
    pub fn members(&self, group: &str) -> Vec<String> {
        self.group(group)["members"]
            .as_array()
            .expect("members array")
            .iter()
            .map(|m| m.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// `user`'s entry in this device's directory.
    pub fn directory_entry(&self, user: &str) -> Value {
        self.json(&["directory"])
            .into_iter()
            .find(|e| e["user"] == user)
            .unwrap_or_else(|| panic!("{user} is not in {}'s directory", self.name))
    }

    pub fn group(&self, group: &str) -> Value {
        self.json(&["groups"])
            .into_iter()
            .find(|g| g["name"] == group)
            .unwrap_or_else(|| panic!("{} has no group {group}", self.name))
    }
}

/// A relay with an organisation and its first admin, `alice`.
pub struct Org {
    pub dir: TempDir,
    pub relay: Relay,
    pub admin: Device,
}

impl Org {
    pub fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let relay = Relay::start(&dir);
        let admin = Device::new(&dir, "alice");
        let token = relay
            .bootstrap_token
            .clone()
            .expect("fresh relay prints a token");
        admin.ok(&[
            "org",
            "create",
            "--relay",
            &relay.addr,
            "--fingerprint",
            &relay.fingerprint,
            "--token",
            &token,
            "--name",
            "Acme",
            "--user",
            "alice",
        ]);
        Self { dir, relay, admin }
    }

    /// Invites, enrols and approves a new user; returns their synced device.
    pub fn enrol(&self, user: &str) -> Device {
        let code = self.admin.ok(&["invite", user]).trim().to_string();
        let device = Device::new(&self.dir, user);
        device.ok(&["join", &code, "--display-name", &format!("{user} display")]);
        self.admin.ok(&["approve", user]);
        device.ok(&["sync"]);
        device
    }
}

/// A running `muster chat`, read line by line.
pub struct Chat {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Device {
    /// Starts `muster chat GROUP` with extra environment variables.
    pub fn chat(&self, group: &str, env: &[(&str, &str)]) -> Chat {
        let mut cmd = self.command();
        cmd.args(["chat", group])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start muster chat");
        let stdout = child.stdout.take().expect("chat stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Chat {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }
}

impl Chat {
    /// Waits (up to 15 s) until a line containing `needle` has been shown; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("chat never showed {needle:?}; it showed {:?}", self.seen),
            }
        }
    }

    /// Types a line, as the user would.
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("chat stdin");
        writeln!(stdin, "{line}").expect("write to chat");
        stdin.flush().expect("flush chat input");
    }

    /// What the chat printed on standard error (read once it has exited).
    pub fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
        }
        text
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether any file under `dir` (recursively) contains `needle`.
pub fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().any(|entry| {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        }
    })
}

/// The relay's database, as a hostile operator would open it between syncs.
pub fn relay_db(org: &Org) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(org.relay.data.join("relay.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db
}

/// The device id of `d`.
pub fn device_id(d: &Device) -> String {
    d.json(&["whoami"])[0]["device_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The id of group `name` as `d` knows it.
pub fn group_id(d: &Device, name: &str) -> Vec<u8> {
    let hex_id = d.group(name)["id"].as_str().unwrap().to_string();
    (0..hex_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_id[i..i + 2], 16).unwrap())
        .collect()
}

/// Runs `muster ARGS` on `device` with `input` on standard input.
pub fn with_input(device: &Device, args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut child = device
        .command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run muster");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to muster");
    child.wait_with_output().expect("muster ends")
}

/// The provisioning file giving each `(handle, display name, role)`.
pub fn roles_file(org: &Org, users: &[(&str, &str, &str)]) -> String {
    let text: String = users
        .iter()
        .map(|(handle, name, role)| {
            format!("[[users]]\nhandle = \"{handle}\"\ndisplay_name = \"{name}\"\nroles = [\"{role}\"]\n")
        })
        .collect();
    let spec = org.dir.path().join("roles.toml");
    std::fs::write(&spec, text).unwrap();
    spec.display().to_string()
}

/// Has `by` apply a provisioning file giving each `(handle, display name, role)`.
pub fn apply_roles(org: &Org, by: &Device, users: &[(&str, &str, &str)]) {
    by.ok(&["admin", "apply", &roles_file(org, users)]);
}

/// The certificate the relay holds for `user`'s one device.
pub fn relay_certificate(org: &Org, user: &str) -> muster_proto::Certificate {
    let bytes: Vec<u8> = relay_db(org)
        .query_row(
            "SELECT certificate FROM devices WHERE user = ?1 AND certificate IS NOT NULL",
            [user],
            |r| r.get(0),
        )
        .unwrap();
    muster_proto::Certificate::from_bytes(&bytes).unwrap()
}

/// One HTTP/1.1 request to `addr` (host:port) on loopback; the status and the body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP server");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before taking the whole body.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A port on 127.0.0.1 that was free a moment ago (for servers that cannot take port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A decrypted copy of `device`'s store in `dir`: what needles would be found in were
/// the store readable (so that greps of the encrypted one can fail).
pub fn decrypted_copy(dir: &Path, device: &Device, key: &muster_keystore::StoreKey) -> PathBuf {
    let plain = dir.join(format!("{}-decrypted.db", device.name));
    let _ = std::fs::remove_file(&plain);
    let db = open_encrypted(&device.home.join("muster.db"), key);
    db.execute(
        "ATTACH DATABASE ?1 AS plain KEY ''",
        [plain.to_string_lossy()],
    )
    .unwrap();
    db.query_row("SELECT sqlcipher_export('plain')", [], |_| Ok(()))
        .unwrap();
    db.execute_batch("DETACH DATABASE plain").unwrap();
    plain
}
