//! `muster-impair`: a UDP forwarder that loses, delays and reorders datagrams, for network
//! fault tests on kernels without `tc netem`.
//!
//! Every client address that sends to `--listen` gets its own upstream socket towards
//! `--upstream`, so several QUIC connections pass through one forwarder. Each datagram, in
//! either direction, is dropped with probability `--loss`, otherwise held for
//! `--delay-ms` plus a random share of `--jitter-ms` (so datagrams overtake each other).
//! With `--control FILE`, the impairment is off while FILE holds the word `pass`.
//! Once a second it prints `forwarded N dropped M` so a test can report what it survived.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

struct Settings {
    listen: SocketAddr,
    upstream: SocketAddr,
    loss: f64,
    delay: Duration,
    jitter: Duration,
    seed: u64,
    control: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Settings, String> {
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("valid"),
        upstream: "127.0.0.1:0".parse().expect("valid"),
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        seed: 1,
        control: None,
    };
    let mut upstream_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: {value:?} is not {what}");
        match flag.as_str() {
            "--listen" => settings.listen = value.parse().map_err(|_| bad("HOST:PORT"))?,
            "--upstream" => {
                settings.upstream = value.parse().map_err(|_| bad("HOST:PORT"))?;
                upstream_given = true;
            }
            "--loss" => {
                settings.loss = value.parse().map_err(|_| bad("a number"))?;
                if !(0.0..=1.0).contains(&settings.loss) {
                    return Err(bad("between 0 and 1"));
                }
            }
            "--delay-ms" => {
                settings.delay = Duration::from_millis(value.parse().map_err(|_| bad("ms"))?)
            }
            "--jitter-ms" => {
                settings.jitter = Duration::from_millis(value.parse().map_err(|_| bad("ms"))?)
            }
            "--seed" => settings.seed = value.parse().map_err(|_| bad("a number"))?,
            "--control" => settings.control = Some(value.into()),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if !upstream_given {
        return Err("--upstream HOST:PORT is required".into());
    }
    Ok(settings)
}

/// Seeded per-direction randomness: whether to drop, and how much jitter.
struct Chance(Mutex<u64>);

impl Chance {
    fn unit(&self) -> f64 {
        let mut s = self.0.lock().expect("rng lock");
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Datagram {
    due: Instant,
    order: u64,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Datagram {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Datagram {}
impl PartialOrd for Datagram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Datagram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

/// Datagrams waiting for their delivery time, sent by one thread in time order.
struct Impairment {
    queue: Mutex<BinaryHeap<Reverse<Datagram>>>,
    wake: Condvar,
    chance: Chance,
    loss: f64,
    delay: Duration,
    jitter: Duration,
    order: AtomicU64,
    passthrough: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Impairment {
    fn pass(&self, socket: &Arc<UdpSocket>, to: SocketAddr, bytes: &[u8]) {
        if self.passthrough.load(Ordering::Relaxed) {
            let _ = socket.send_to(bytes, to);
            return;
        }
        if self.loss > 0.0 && self.chance.unit() < self.loss {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        if self.delay.is_zero() && self.jitter.is_zero() {
            let _ = socket.send_to(bytes, to);
            return;
        }
        let due = Instant::now() + self.delay + self.jitter.mul_f64(self.chance.unit());
        let datagram = Datagram {
            due,
            order: self.order.fetch_add(1, Ordering::Relaxed),
            socket: Arc::clone(socket),
            to,
            bytes: bytes.to_vec(),
        };
        self.queue
            .lock()
            .expect("queue lock")
            .push(Reverse(datagram));
        self.wake.notify_one();
    }

    /// Reads the control file and announces a change of state.
    fn follow_control(&self, control: Option<&std::path::Path>) {
        let Some(path) = control else { return };
        let pass = std::fs::read_to_string(path).unwrap_or_default().trim() == "pass";
        if self.passthrough.swap(pass, Ordering::Relaxed) != pass {
            println!("impairment {}", if pass { "off" } else { "on" });
        }
    }

    fn run_sender(&self) {
        let mut queue = self.queue.lock().expect("queue lock");
        loop {
            let now = Instant::now();
            match queue.peek() {
                Some(Reverse(next)) if next.due <= now => {
                    let Reverse(datagram) = queue.pop().expect("peeked");
                    let _ = datagram.socket.send_to(&datagram.bytes, datagram.to);
                }
                Some(Reverse(next)) => {
                    let wait = next.due - now;
                    queue = self.wake.wait_timeout(queue, wait).expect("queue lock").0;
                }
                None => queue = self.wake.wait(queue).expect("queue lock"),
            }
        }
    }
}

fn main() {
    let settings = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("muster-impair: {e}");
            std::process::exit(2);
        }
    };
    let front = Arc::new(UdpSocket::bind(settings.listen).unwrap_or_else(|e| {
        eprintln!("muster-impair: cannot listen on {}: {e}", settings.listen);
        std::process::exit(1);
    }));
    let impairment = Arc::new(Impairment {
        queue: Mutex::new(BinaryHeap::new()),
        wake: Condvar::new(),
        chance: Chance(Mutex::new(settings.seed)),
        loss: settings.loss,
        delay: settings.delay,
        jitter: settings.jitter,
        order: AtomicU64::new(0),
        passthrough: AtomicBool::new(false),
        forwarded: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    println!(
        "muster-impair listening on {}",
        front.local_addr().expect("bound address")
    );
    impairment.follow_control(settings.control.as_deref());
    {
        let impairment = Arc::clone(&impairment);
        std::thread::spawn(move || impairment.run_sender());
    }
    {
        let impairment = Arc::clone(&impairment);
        let control = settings.control.clone();
        std::thread::spawn(move || {
            for tick in 1u64.. {
                std::thread::sleep(Duration::from_millis(100));
                impairment.follow_control(control.as_deref());
                if tick % 10 == 0 {
                    println!(
                        "forwarded {} dropped {}",
                        impairment.forwarded.load(Ordering::Relaxed),
                        impairment.dropped.load(Ordering::Relaxed)
                    );
                }
            }
        });
    }
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, client)) = front.recv_from(&mut buf) else {
            continue;
        };
        let upstream = match upstreams.get(&client) {
            Some(socket) => Arc::clone(socket),
            None => {
                let bind: SocketAddr = if settings.upstream.is_ipv6() {
                    "[::]:0".parse().expect("valid")
                } else {
                    "0.0.0.0:0".parse().expect("valid")
                };
                let Ok(socket) = UdpSocket::bind(bind) else {
                    continue;
                };
                let socket = Arc::new(socket);
                let (back, front, impairment) = (
                    Arc::clone(&socket),
                    Arc::clone(&front),
                    Arc::clone(&impairment),
                );
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match back.recv_from(&mut buf) {
                            Ok((len, _)) => impairment.pass(&front, client, &buf[..len]),
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                });
                upstreams.insert(client, Arc::clone(&socket));
                socket
            }
        };
        impairment.pass(&upstream, settings.upstream, &buf[..len]);
    }
}
