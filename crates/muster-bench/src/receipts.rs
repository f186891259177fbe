//! `receipts`: what receipts cost the relay. A group of real client engines; the admin
//! posts texts one after another, and every other member fetches each, reads it and
//! syncs (so its receipts go out), then the author syncs. The figure is the relay's
//! deliveries per text, split into the text's own fan-out and the receipts'.

use crate::harness::{HarnessError, Org};
use crate::report::Report;
use muster_driver::Connection;
use muster_engine::Engine;

/// The shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub members: usize,
    pub texts: usize,
}

pub async fn run(load: Load) -> Result<Report, HarnessError> {
    let members = load.members.max(2);
    let mut org = Org::create("receipts").await?;
    let users: Vec<String> = (1..members).map(|i| format!("member{i}")).collect();
    let mut readers: Vec<Engine> = org.enrol_many(&users).await?;
    let group = org.group("receipts", &mut readers).await?;
    let mut conns: Vec<Connection> = Vec::new();
    for engine in readers.iter_mut() {
        let conn = muster_driver::connect(engine).await?;
        engine.sync(&conn).await?;
        conns.push(conn);
    }
    let author_conn = &org.admin_conn;
    org.admin.sync(author_conn).await?;

    let (mut text_deliveries, mut receipt_deliveries, mut receipts_sent) = (0, 0, 0);
    for index in 0..load.texts {
        org.admin
            .send_text(author_conn, &group, &format!("text {index}"))
            .await?;
        for (engine, conn) in readers.iter_mut().zip(&conns) {
            let got = engine.sync(conn).await?;
            text_deliveries += got.received;
            receipt_deliveries += got.fetched.saturating_sub(got.received);
            receipts_sent += got.sent;
            let shown = engine.read(&group, 1)?;
            engine.mark_read(&shown)?;
            let sent = engine.sync(conn).await?;
            receipts_sent += sent.sent;
            receipt_deliveries += sent.fetched;
        }
        let author = org.admin.sync(author_conn).await?;
        receipt_deliveries += author.fetched;
    }
    for conn in conns {
        conn.close().await;
    }

    let texts = load.texts.max(1) as f64;
    let fanout = (members - 1) as f64;
    let mut report = Report::new("receipts");
    report.set("members", members);
    report.set("texts", load.texts);
    report.set("text_deliveries_per_text", text_deliveries as f64 / texts);
    report.set(
        "receipt_deliveries_per_text",
        receipt_deliveries as f64 / texts,
    );
    report.set("receipts_sent_per_text", receipts_sent as f64 / texts);
    report.set(
        "deliveries_per_text_over_fanout",
        ((text_deliveries + receipt_deliveries) as f64 / texts / fanout * 100.0).round() / 100.0,
    );
    // Had every receipt gone to the whole group, as before issue 17.
    report.set(
        "deliveries_per_text_if_receipts_reached_everyone",
        (text_deliveries as f64 + receipts_sent as f64 * fanout) / texts,
    );
    drop(org);
    Ok(report)
}
