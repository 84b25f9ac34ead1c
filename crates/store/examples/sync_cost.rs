//! What a durable SQLite commit costs, for BENCHMARKS.md: one-row write
//! transactions, one after another, with `synchronous = NORMAL` and `FULL`.
//! Measured, never asserted:
//! `cargo run --release -p tandem-store --example sync_cost -- [commits] [dir]`
//! (the directory defaults to the system's temporary one; use the disk the
//! data dir lives on).

use std::time::Instant;

use tandem_store::{Migrations, Store, StoreOptions, Synchronous};

static MIGRATIONS: Migrations = tandem_store::migrations![in "examples/sync_cost_migrations": "0001_rows.sql"];

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let commits: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1000);
    let parent = args.next().map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    println!("| synchronous | commits | commits/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for (name, synchronous) in [("NORMAL", Synchronous::Normal), ("FULL", Synchronous::Full)] {
        let dir = tempfile::tempdir_in(&parent)?;
        let url = format!("sqlite://{}/cost.db", dir.path().display());
        let options = StoreOptions { synchronous, ..StoreOptions::new(url, "cost") };
        let store = Store::open(options, &MIGRATIONS).await?;
        let mut latencies = Vec::with_capacity(commits);
        let started = Instant::now();
        for id in 0..commits {
            let begun = Instant::now();
            let mut tx = store.begin_write().await?;
            sqlx::query("INSERT INTO rows (id, body) VALUES ($1, $2)")
                .bind(i64::try_from(id)?)
                .bind("a check-in's worth of bytes ".repeat(8))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            latencies.push(begun.elapsed().as_secs_f64() * 1000.0);
        }
        let rate = commits as f64 / started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        println!(
            "| {name} | {commits} | {rate:.0} | {:.2} | {:.2} |",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
        store.close().await;
    }
    Ok(())
}
