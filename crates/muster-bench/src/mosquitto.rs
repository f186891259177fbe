//! The `relay` load through Mosquitto: a broker the bench starts on a free loopback port
//! with persistence on, receivers with persistent sessions subscribed at QoS 1, and
//! senders publishing at QoS 1 with the same number of messages in flight.

use crate::harness::{HarnessError, Scratch};
use crate::relay::{Load, Outcome};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOPIC: &str = "muster/bench";

/// A Mosquitto process; killed on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> Result<PathBuf, HarnessError> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| {
        HarnessError::Setup(
            "mosquitto is not installed: install the Debian package `mosquitto` \
                 (apt-get install mosquitto) to compare against it"
                .into(),
        )
    })
}

async fn start_broker(scratch: &Scratch) -> Result<Broker, HarnessError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let data = scratch.path().join("mosquitto");
    std::fs::create_dir_all(&data)?;
    let config = scratch.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             max_queued_messages 0\n\
             max_inflight_messages 0\n\
             log_dest none\n",
            data.display()
        ),
    )?;
    let child = Command::new(mosquitto_binary()?)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let broker = Broker { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(HarnessError::Setup(format!(
                "mosquitto did not listen on 127.0.0.1:{port} within 10 seconds"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(broker)
}

fn options(id: &str, port: u16, load: Load, payload_bytes: usize) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(60))
        .set_inflight(load.window.clamp(1, u16::MAX as usize) as u16)
        .set_max_packet_size(payload_bytes + 4096, payload_bytes + 4096);
    options
}

fn mqtt_error(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Setup(format!("mqtt: {e}"))
}

/// Runs `load` through Mosquitto with payloads of `payload_bytes` (the size of our
/// encrypted messages).
pub async fn run(load: Load, payload_bytes: usize) -> Result<Outcome, HarnessError> {
    let scratch = Scratch::new("mosquitto")?;
    let broker = start_broker(&scratch).await?;
    let payload_bytes = payload_bytes.max(8);

    // Receivers: persistent sessions, subscribed before anything is published.
    let mut receivers = Vec::new();
    for i in 0..load.members {
        let (client, mut events) = AsyncClient::new(
            options(&format!("member{i}"), broker.port, load, payload_bytes),
            1024,
        );
        client
            .subscribe(TOPIC, QoS::AtLeastOnce)
            .await
            .map_err(mqtt_error)?;
        loop {
            match events.poll().await.map_err(mqtt_error)? {
                Event::Incoming(Packet::SubAck(_)) => break,
                _ => continue,
            }
        }
        receivers.push((client, events));
    }
    let mut publishers = Vec::new();
    for i in 0..load.senders.max(1) {
        let (client, mut events) = AsyncClient::new(
            options(&format!("sender{i}"), broker.port, load, payload_bytes),
            1024,
        );
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await.map_err(mqtt_error)? {
                break;
            }
        }
        publishers.push((client, events));
    }

    let start = Instant::now();
    let receiving: Vec<_> = receivers
        .into_iter()
        .map(|(client, events)| tokio::spawn(receive(client, events, load.messages)))
        .collect();
    let senders = publishers.len();
    let sending: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(s, (client, events))| {
            let indexes: Vec<usize> = (s..load.messages).step_by(senders).collect();
            tokio::spawn(publish(client, events, indexes, payload_bytes))
        })
        .collect();
    let mut sent_at = vec![start; load.messages];
    for task in sending {
        for (index, at) in join(task).await?? {
            sent_at[index] = at;
        }
    }
    let mut latencies_ms = Vec::new();
    let mut end = start;
    let mut deliveries = 0;
    for task in receiving {
        for (index, at) in join(task).await?? {
            let sent = sent_at.get(index).ok_or_else(|| {
                HarnessError::Setup(format!("mosquitto delivered unknown message {index}"))
            })?;
            latencies_ms.push(crate::report::ms(at.saturating_duration_since(*sent)));
            end = end.max(at);
            deliveries += 1;
        }
    }
    drop(broker);
    Ok(Outcome {
        deliveries,
        elapsed: end - start,
        latencies_ms,
    })
}

async fn join<T>(task: tokio::task::JoinHandle<T>) -> Result<T, HarnessError> {
    tokio::time::timeout(Duration::from_secs(600), task)
        .await
        .map_err(|_| {
            HarnessError::Setup("the Mosquitto run did not finish within 10 minutes".into())
        })?
        .map_err(|e| HarnessError::Setup(format!("a load task failed: {e}")))
}

/// Publishes the messages `indexes` at QoS 1; returns when the broker acknowledged all.
async fn publish(
    client: AsyncClient,
    mut events: EventLoop,
    indexes: Vec<usize>,
    payload_bytes: usize,
) -> Result<Vec<(usize, Instant)>, HarnessError> {
    let mut sent = Vec::with_capacity(indexes.len());
    let total = indexes.len();
    let feeder = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut times = Vec::with_capacity(indexes.len());
            for index in indexes {
                let mut payload = vec![b'x'; payload_bytes];
                payload[..8].copy_from_slice(&(index as u64).to_be_bytes());
                times.push((index, Instant::now()));
                client
                    .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                    .await
                    .map_err(mqtt_error)?;
            }
            Ok::<_, HarnessError>(times)
        })
    };
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.map_err(mqtt_error)? {
            acked += 1;
        }
    }
    sent.extend(join(feeder).await??);
    let _ = client.disconnect().await;
    Ok(sent)
}

/// A receiving client: returns each message's index and arrival time once it has
/// `expected` of them.
async fn receive(
    client: AsyncClient,
    mut events: EventLoop,
    expected: usize,
) -> Result<Vec<(usize, Instant)>, HarnessError> {
    let mut got = Vec::with_capacity(expected);
    while got.len() < expected {
        if let Event::Incoming(Packet::Publish(p)) = events.poll().await.map_err(mqtt_error)? {
            let mut index = [0u8; 8];
            index.copy_from_slice(p.payload.get(..8).unwrap_or(&[0; 8]));
            got.push((u64::from_be_bytes(index) as usize, Instant::now()));
        }
    }
    // Let the last acknowledgements out before the session ends.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    Ok(got)
}
