//! Unit tests of the archive's chain, retention, holds, exports and checks.

use super::*;

fn plain(record: &str) -> Result<String, EngineError> {
    Ok(record.to_string())
}
use ring::signature::{Ed25519KeyPair, KeyPair};

fn store() -> Connection {
    let db = Connection::open_in_memory().unwrap();
    migrate(&db).unwrap();
    db
}

fn message(sender: &str, text: &str, sent_at: i64) -> ArchivedMessage {
    ArchivedMessage {
        group_id: "00aa".into(),
        group: "ops".into(),
        relay_seq: 1,
        sender: sender.into(),
        sender_device: "d1".into(),
        sent_at,
        received_at: sent_at + 5,
        id: format!("{sender}-{sent_at}"),
        body: serde_json::json!({"type": "text", "text": text}),
    }
}

fn key() -> Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap()
}

fn filled(key: &Ed25519KeyPair) -> Connection {
    let db = store();
    for (i, who) in ["alice", "bob", "alice", "carol"].iter().enumerate() {
        let expires = (*who == "carol").then_some(2500);
        // Each claims to be sent long ago; the archive received them at 1000 + i.
        record_message(
            &db,
            &[0, 0xaa],
            &message(who, "hello", i as i64),
            expires,
            1000 + i as i64,
            None,
        )
        .unwrap();
        checkpoint(&db, 2000, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
    }
    db
}

#[test]
fn an_untouched_archive_verifies() {
    let key = key();
    let db = filled(&key);
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert_eq!(report.entries, 4);
    assert_eq!(report.checkpoints, 4);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn one_changed_byte_names_the_entry() {
    let key = key();
    let db = filled(&key);
    db.execute(
        "UPDATE archive_entries SET record = replace(record, 'hello', 'hellO') WHERE seq = 3",
        [],
    )
    .unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.starts_with("entry 3:")),
        "{:?}",
        report.problems
    );
}

#[test]
fn removed_and_reordered_entries_are_found() {
    let key = key();
    let db = filled(&key);
    db.execute("DELETE FROM archive_entries WHERE seq = 2", [])
        .unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert!(report.problems.iter().any(|p| p.contains("entry 2")));

    let db = filled(&key);
    db.execute_batch(
        "UPDATE archive_entries SET seq = 100 WHERE seq = 2;
         UPDATE archive_entries SET seq = 2 WHERE seq = 3;
         UPDATE archive_entries SET seq = 3 WHERE seq = 100;",
    )
    .unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert!(!report.problems.is_empty());
}

#[test]
fn a_rewritten_chain_fails_the_signature() {
    let key = key();
    let db = filled(&key);
    rewrite_last_entry(&db);
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert_eq!(
        report.problems,
        ["checkpoint at entry 4: signature does not verify"]
    );
}

/// Rewrites entry 4 and recomputes its hashes and checkpoint hash, as someone
/// without the archive's key would.
fn rewrite_last_entry(db: &Connection) {
    let (recorded_at, prev): (i64, Vec<u8>) = db
        .query_row(
            "SELECT recorded_at, prev_hash FROM archive_entries WHERE seq = 4",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let record = serde_json::to_string(&message("carol", "forged", 1003)).unwrap();
    let ch = content_hash(&record);
    let rh = record_hash("message", recorded_at, &ch);
    let hash = chain_hash(&prev, 4, &rh);
    db.execute(
        "UPDATE archive_entries SET record = ?1, record_hash = ?2, content_hash = ?3, hash = ?4 WHERE seq = 4",
        params![record, rh, ch, hash],
    )
    .unwrap();
    db.execute(
        "UPDATE archive_checkpoints SET hash = ?1 WHERE entry_seq = 4",
        params![hash],
    )
    .unwrap();
}

#[test]
fn an_archive_from_before_content_hashes_upgrades_and_cannot_be_downgraded() {
    let key = key();
    let db = store();
    db.execute_batch("ALTER TABLE archive_entries DROP COLUMN content_hash")
        .unwrap();
    let mut prev = GENESIS.to_vec();
    for seq in 1..=2i64 {
        let record = serde_json::to_string(&message("alice", "old", seq)).unwrap();
        let rh = legacy_record_hash("message", 1000 + seq, &record);
        let hash = chain_hash(&prev, seq, &rh);
        db.execute(
            "INSERT INTO archive_entries (seq, recorded_at, kind, record, record_hash, prev_hash, hash)
             VALUES (?1, ?2, 'message', ?3, ?4, ?5, ?6)",
            params![seq, 1000 + seq, record, rh, prev, hash],
        )
        .unwrap();
        prev = hash;
    }
    migrate(&db).unwrap();
    record_message(&db, &[0, 0xaa], &message("bob", "new", 3), None, 1100, None).unwrap();
    checkpoint(&db, 2000, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert_eq!(report.entries, 4, "two old entries, the upgrade, one new");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Stripping the new entry's content hash does not pass it off as an old one.
    db.execute(
        "UPDATE archive_entries SET content_hash = NULL WHERE seq = 4",
        [],
    )
    .unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("entry 4: has no content hash")),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_cleared_entrys_kind_and_time_stay_bound_to_the_chain() {
    let key = key();
    let db = filled(&key);
    prune(&db, Some(1003), false, 2400).unwrap();
    checkpoint(&db, 2600, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let cleared: i64 = db
        .query_row(
            "SELECT MIN(seq) FROM archive_entries WHERE record IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // The host backdates a cleared entry, or relabels it, hoping to pass it off.
    for tamper in [
        "UPDATE archive_entries SET recorded_at = recorded_at - 1 WHERE seq = ?1",
        "UPDATE archive_entries SET kind = 'access' WHERE seq = ?1",
    ] {
        let db = filled(&key);
        prune(&db, Some(1003), false, 2400).unwrap();
        checkpoint(&db, 2600, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
        db.execute(tamper, [cleared]).unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains(&format!("entry {cleared}: its kind or time was altered"))),
            "{tamper}: {:?}",
            report.problems
        );
    }
    // Stripping the content hash to pass the oldest (cleared) entries off as entries
    // from before content hashes is seen too.
    let db = filled(&key);
    db.execute(
        "UPDATE archive_entries SET content_hash = NULL WHERE seq IN (1, 2)",
        [],
    )
    .unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("entry 1: has no content hash")),
        "{:?}",
        report.problems
    );
}

#[test]
fn retention_clears_old_entries_except_held_users_and_the_chain_still_verifies() {
    let key = key();
    let db = filled(&key);
    set_hold(&db, "bob", true, 2000).unwrap();
    let cleared = prune(&db, Some(1003), false, 2400).unwrap();
    assert_eq!(
        cleared, 2,
        "alice's two old entries; bob is held, carol is recent"
    );
    let filter = |user: &str| ExportFilter {
        user: user.into(),
        ..ExportFilter::default()
    };
    assert!(messages(&db, &filter("alice"), &plain).unwrap().is_empty());
    assert_eq!(messages(&db, &filter("bob"), &plain).unwrap().len(), 1);
    assert_eq!(messages(&db, &filter("carol"), &plain).unwrap().len(), 1);
    // Carol's group makes messages disappear at 2500: that erases her entry only
    // where the organisation's retention says disappearing times apply.
    assert_eq!(prune(&db, None, false, 2600).unwrap(), 0);
    assert_eq!(prune(&db, None, true, 2600).unwrap(), 1);
    assert!(messages(&db, &filter("carol"), &plain).unwrap().is_empty());
    checkpoint(&db, 2600, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert_eq!(report.pruned, 3);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn an_entry_cleared_without_a_lawful_prune_is_named() {
    let key = key();
    let db = filled(&key);
    // Someone with the database clears bob's entry by hand, and even signs anew.
    db.execute("UPDATE archive_entries SET record = NULL WHERE seq = 2", [])
        .unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("entry 2:") && p.contains("no recorded prune")),
        "{:?}",
        report.problems
    );
    // A prune during a legal hold is named too.
    let db = filled(&key);
    record_access(
        &db,
        &AccessRecord {
            approved_by: Vec::new(),
            who: "ops".into(),
            action: "hold".into(),
            what: "carol".into(),
        },
        2100,
    )
    .unwrap();
    // The hold table was emptied behind the archive's back before the prune.
    prune(&db, None, true, 2600).unwrap();
    checkpoint(&db, 2600, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
    let report = verify(&db, key.public_key().as_ref()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("legal hold")),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_published_checkpoint_exposes_a_cut_off_end_and_a_rewritten_history() {
    let key = key();
    let db = filled(&key);
    let published = checkpoints(&db).unwrap();
    db.execute("DELETE FROM archive_entries WHERE seq = 4", [])
        .unwrap();
    db.execute("DELETE FROM archive_checkpoints WHERE entry_seq = 4", [])
        .unwrap();
    let (entries, own) = chain(&db).unwrap();
    let mut report = verify_chain(&entries, &own, key.public_key().as_ref());
    assert!(report.problems.is_empty(), "locally it looks intact");
    compare_published(&mut report, &entries, &published, key.public_key().as_ref());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("entry 4:") && p.contains("removed from its end")),
        "{:?}",
        report.problems
    );
    // Checkpoints that do not verify with the archive's key are not evidence.
    let other = self::key();
    let mut report = verify_chain(&entries, &own, key.public_key().as_ref());
    compare_published(
        &mut report,
        &entries,
        &published,
        other.public_key().as_ref(),
    );
    assert_eq!(report.published, 0);
}
