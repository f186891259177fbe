//! `fanout`: what one member feels. One real client engine (its own store, MLS
//! decryption, receipts) receives a group's traffic through a real relay, while the
//! other members are protocol-level devices ([`crate::protocol`]) that fetch and
//! acknowledge as connected devices do. Senders post messages encrypted beforehand by
//! real engines at a set rate. The figure is the relay plus one client, as a user on
//! their own device sees it: from the send request to the message in that user's store.

use crate::fanout::{latencies, member, Load};
use crate::harness::{HarnessError, Org};
use crate::protocol::{drain, follow};
use crate::relay::{hex_decode, join, queued, text_of, Queued};
use crate::report::{ms, quantile, Report};
use muster_proto::{Request, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(load: Load) -> Result<Report, HarnessError> {
    let members = load.members.max(3);
    // The admin and `senders - 1` more send; one member is the real receiving device.
    let senders = load.senders.clamp(1, members - 2);
    let mut org = Org::create("fanout").await?;
    let mut real = Vec::new();
    for i in 1..senders {
        real.push(org.enrol(&format!("sender{i}")).await?);
    }
    real.push(org.enrol("observer").await?);
    let quiet_users: Vec<String> = (0..members - senders - 1)
        .map(|i| format!("member{i}"))
        .collect();
    let quiet = org.enrol_many(&quiet_users).await?;
    let group = org
        .group_with_others("fanout", &mut real, &quiet_users)
        .await?;
    let group_id = hex_decode(&group)?;
    let observer = real.pop().expect("the observer was enrolled");

    // Encrypted up front by the senders' real engines, sender i % senders for message i.
    for index in 0..load.messages {
        let sender = index % senders;
        let engine = if sender == 0 {
            &mut org.admin
        } else {
            &mut real[sender - 1]
        };
        engine.queue_text(&group, &text_of(load.size, index))?;
    }
    let mut outboxes = vec![queued(org.admin.home())?];
    for engine in &real {
        outboxes.push(queued(engine.home())?);
    }

    // Every other device is connected and has fetched what waited (its Welcome).
    let mut sender_conns = vec![Arc::new(muster_driver::connect(&mut org.admin).await?)];
    for engine in real.iter_mut() {
        sender_conns.push(Arc::new(muster_driver::connect(engine).await?));
    }
    let mut quiet_conns = Vec::new();
    for mut engine in quiet {
        let conn = muster_driver::connect(&mut engine).await?;
        drain(&conn).await?;
        quiet_conns.push(conn);
    }
    for conn in &sender_conns {
        drain(conn).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let quiet_tasks: Vec<_> = quiet_conns
        .into_iter()
        .map(|conn| tokio::spawn(follow(Arc::new(conn), stop.clone())))
        .collect();
    // The senders fetch too (the observer's receipts are for them).
    let sender_followers: Vec<_> = sender_conns
        .iter()
        .map(|conn| tokio::spawn(follow(conn.clone(), stop.clone())))
        .collect();

    // The real device runs on a thread and runtime of its own, as on its own hardware.
    let start = Instant::now() + Duration::from_millis(300);
    let group_name = group.clone();
    let expected = load.messages;
    let observer_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(member(observer, group_name, Vec::new(), 0, expected))
    });

    let interval = if load.rate > 0.0 {
        Duration::from_secs_f64(1.0 / load.rate)
    } else {
        Duration::ZERO
    };
    let mut schedule: Vec<(usize, Queued)> = Vec::with_capacity(load.messages);
    for (sender, list) in outboxes.into_iter().enumerate() {
        for (k, prepared) in list.into_iter().enumerate() {
            schedule.push((k * senders + sender, prepared));
        }
    }
    schedule.sort_by_key(|(index, _)| *index);
    let mut sends = Vec::with_capacity(schedule.len());
    for (index, prepared) in schedule {
        let due = start + interval * index as u32;
        tokio::time::sleep_until(due.into()).await;
        let conn = sender_conns[index % senders].clone();
        let group_id = group_id.clone();
        sends.push(tokio::spawn(async move {
            let at = Instant::now();
            let answer = conn
                .request(&Request::Send {
                    group_id,
                    message: prepared.message,
                    client_id: prepared.client_id,
                })
                .await;
            match answer {
                Ok(Response::Stored { .. }) => Ok((prepared.id, at)),
                Ok(other) => Err(HarnessError::Setup(format!(
                    "unexpected answer to Send: {other:?}"
                ))),
                Err(e) => Err(HarnessError::Link(e)),
            }
        }));
    }
    let mut sent_at = HashMap::new();
    for task in sends {
        let (id, at) = join(task).await??;
        sent_at.insert(id, at);
    }
    let (_, arrivals) = tokio::task::spawn_blocking(move || observer_thread.join())
        .await
        .map_err(|e| HarnessError::Setup(format!("the observer thread failed: {e}")))?
        .map_err(|_| HarnessError::Setup("the observer thread panicked".into()))??;
    stop.store(true, Ordering::Relaxed);
    let mut quiet_fetched = 0;
    for task in quiet_tasks {
        quiet_fetched += join(task).await??;
    }
    let mut sender_fetched = 0;
    for task in sender_followers {
        sender_fetched += join(task).await??;
    }
    for conn in sender_conns {
        if let Ok(conn) = Arc::try_unwrap(conn) {
            conn.close().await;
        }
    }

    let (mut latencies, end) = latencies(&arrivals, &sent_at, start)?;
    let mut report = Report::new("fanout");
    report.set("mode", "one real engine");
    report.set("members", members);
    report.set("senders", senders);
    report.set("messages", load.messages);
    report.set("size", load.size);
    report.set("offered_rate_per_s", load.rate);
    report.set("received", arrivals.len());
    report.set("elapsed_ms", ms(end.saturating_duration_since(start)));
    report.set("latency_p50_ms", quantile(&mut latencies, 0.5));
    report.set("latency_p99_ms", quantile(&mut latencies, 0.99));
    report.set("others_fetched", quiet_fetched);
    report.set("senders_fetched", sender_fetched);
    drop(org);
    Ok(report)
}
