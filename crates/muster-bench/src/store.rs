//! `store`: a device store holding many messages. The bench fills a real client store
//! (the engine's schema, full-text index triggers included) with generated conversations,
//! then times what a user waits for through the engine's API: opening the store, the
//! latest 50 messages of a conversation, and full-text searches.

use crate::harness::{HarnessError, Scratch};
use crate::report::{ms, quantile, Report};
use muster_engine::Engine;
use muster_keystore::StoreKey;
use std::time::Instant;

/// Conversations the messages are spread over; the first holds half of them.
const GROUPS: usize = 10;
/// Distinct words in generated text.
const VOCABULARY: usize = 5000;

/// A small deterministic generator (xorshift64*), so every run builds the same store.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word rank, roughly Zipf-distributed: rank r is about 1/r as frequent.
    fn rank(&mut self) -> usize {
        ((VOCABULARY as f64).powf(self.unit()) as usize).clamp(1, VOCABULARY) - 1
    }
}

/// The word of rank `rank`: made of syllables, so it tokenises as one word.
fn word(rank: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "hu", "ja", "pe",
        "zo",
    ];
    let mut out = String::new();
    let mut n = rank + 16;
    while n > 0 {
        out.push_str(SYLLABLES[n % 16]);
        n /= 16;
    }
    out
}

fn sentence(rng: &mut Rng) -> String {
    let words = 4 + (rng.next() % 16) as usize;
    (0..words)
        .map(|_| word(rng.rank()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fills the store at `home` with `messages` messages; returns the group names.
fn fill(
    home: &std::path::Path,
    messages: usize,
    key: Option<&StoreKey>,
) -> Result<Vec<String>, HarnessError> {
    let store = |e: rusqlite::Error| HarnessError::Setup(format!("filling the store: {e}"));
    let mut db = open_raw(home, key).map_err(store)?;
    // Generation only: the engine itself always writes with synchronous=FULL.
    db.pragma_update(None, "synchronous", "OFF")
        .map_err(store)?;
    let tx = db.transaction().map_err(store)?;
    let names: Vec<String> = (0..GROUPS).map(|g| format!("team{g}")).collect();
    for (g, name) in names.iter().enumerate() {
        tx.execute(
            "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, ?2, 'active', 0)",
            rusqlite::params![vec![g as u8 + 1; 16], name],
        )
        .map_err(store)?;
    }
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO messages (id, group_id, kind, sender, sender_device, body, sent_at,
                     received_at, relay_seq, status, sort_key)
                 VALUES (?1, ?2, 'text', ?3, ?4, ?5, ?6, ?6, ?7, 'received', ?7 * 1000)",
            )
            .map_err(store)?;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut next_seq = [0i64; GROUPS];
        let start_ms: i64 = 1_700_000_000_000;
        for i in 0..messages {
            // Half of everything goes to the first conversation.
            let g = if rng.next().is_multiple_of(2) {
                0
            } else {
                1 + (rng.next() as usize % (GROUPS - 1))
            };
            next_seq[g] += 1;
            let sender = format!("user{}", rng.next() % 200);
            insert
                .execute(rusqlite::params![
                    format!("{i:016x}"),
                    vec![g as u8 + 1; 16],
                    sender,
                    format!("{sender}-phone"),
                    sentence(&mut rng),
                    start_ms + i as i64 * 1000,
                    next_seq[g],
                ])
                .map_err(store)?;
        }
    }
    tx.commit().map_err(store)?;
    Ok(names)
}

/// The store's database opened directly (with its key, when encrypted).
fn open_raw(
    home: &std::path::Path,
    key: Option<&StoreKey>,
) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(home.join("muster.db"))?;
    if let Some(key) = key {
        db.pragma_update(None, "key", key.sqlcipher_pragma().as_str())?;
    }
    Ok(db)
}

/// The median time of `runs` calls of `f`, which must succeed each time.
fn median<T>(
    runs: usize,
    mut f: impl FnMut() -> Result<T, HarnessError>,
) -> Result<(f64, T), HarnessError> {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        last = Some(f()?);
        times.push(ms(started.elapsed()));
    }
    let value = last.expect("ran at least once");
    Ok((quantile(&mut times, 0.5), value))
}

/// Runs the scenario on a store of `messages` messages, encrypted (SQLCipher) when
/// `encrypted`.
pub fn run(messages: usize, encrypted: bool) -> Result<Report, HarnessError> {
    let scratch = Scratch::new("store")?;
    let home = scratch.path().join("device");
    let key = encrypted.then(StoreKey::generate);
    let key = key.as_ref();
    drop(Engine::open_with_key(&home, key)?);
    let started = Instant::now();
    let groups = fill(&home, messages, key)?;
    let fill_time = started.elapsed();
    let size = std::fs::metadata(home.join("muster.db"))?.len()
        + std::fs::metadata(home.join("muster.db-wal")).map_or(0, |m| m.len());

    let (open_ms, engine) = median(5, || Ok(Engine::open_with_key(&home, key)?))?;
    let busiest = &groups[0];
    let (latest_ms, latest) = median(21, || Ok(engine.read(busiest, 50)?))?;
    if latest.len() != 50.min(messages) && messages >= 100 {
        return Err(HarnessError::Setup(format!(
            "latest 50 of {busiest} returned {} messages",
            latest.len()
        )));
    }
    // A common word (rank 20), a rarer one (rank 1000), two words together, and a
    // search within one conversation.
    let common = word(19);
    let rare = word(999);
    let two = format!("{} {}", word(49), word(299));
    let (search_common_ms, common_hits) = median(11, || Ok(engine.search(&common, None, 50)?))?;
    let (search_rare_ms, rare_hits) = median(11, || Ok(engine.search(&rare, None, 50)?))?;
    let (search_two_ms, _) = median(11, || Ok(engine.search(&two, None, 50)?))?;
    let (search_group_ms, _) = median(11, || {
        Ok(engine.search(&common, Some(busiest.as_str()), 50)?)
    })?;
    let matching = |w: &str| -> Result<i64, HarnessError> {
        open_raw(&home, key)
            .and_then(|db| {
                db.query_row(
                    "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?1",
                    [format!("\"{w}\"*")],
                    |r| r.get(0),
                )
            })
            .map_err(|e| HarnessError::Setup(format!("counting matches: {e}")))
    };

    let mut report = Report::new("store");
    report.set("messages", messages);
    report.set("encrypted", encrypted);
    report.set("conversations", GROUPS);
    report.set("store_bytes", size);
    report.set("fill_ms", ms(fill_time));
    report.set("open_ms", open_ms);
    report.set("latest50_ms", latest_ms);
    report.set("search_ms", search_common_ms);
    report.set("search_common_prefix_matches", matching(&common)?);
    report.set("search_common_results", common_hits.len());
    report.set("search_rare_ms", search_rare_ms);
    report.set("search_rare_prefix_matches", matching(&rare)?);
    report.set("search_rare_results", rare_hits.len());
    report.set("search_two_words_ms", search_two_ms);
    report.set("search_in_conversation_ms", search_group_ms);
    drop(engine);
    Ok(report)
}
