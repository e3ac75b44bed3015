//! `medrelay bench csv`, `medrelay bench plan` (and `bench mllp`, `bench fhir`, in `bench_connectors`; `bench webhooks` in `bench_webhooks`): throughput on
//! this machine, with peak memory.
//!
//! Build with `--release`; numbers are recorded in BENCHMARKS.md. Synthetic rows are generated into a
//! temporary file first (streamed, never held in memory), so the measurement is the import alone.

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use medrelay_pipeline::clock::{ManualClock, SystemClock};

use crate::config::load_str;
use crate::wiring::{build_service, import_csv, open_store};
use crate::{Output, exit};

/// `medrelay bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Import N synthetic OpenEMR-style rows into a fresh SQLite database.
    Csv(BenchArgs),
    /// Import N appointments, then time planning them (plan + outbox rows).
    Plan(BenchArgs),
    /// Send N HL7 SIU messages over MLLP, each committed before its ACK.
    Mllp(super::bench_connectors::MllpBenchArgs),
    /// Map and commit a FHIR Bundle of N Appointments with their Patients and Consents.
    Fhir(super::bench_connectors::FhirBenchArgs),
    /// POST signed status webhooks over N connections while they are applied: stored/s, applied/s.
    Webhooks(super::bench_webhooks::WebhookBenchArgs),
}

/// Arguments of the benchmarks.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of rows / appointments.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Only read and map the file (no database): shows how the time splits between reader and store.
    #[arg(long)]
    pub parse_only: bool,
    /// `bench plan` only: then claim and complete every planned job with this many concurrent
    /// workers (batches of 100, each job finished as sent), checking that none is claimed twice.
    #[arg(long)]
    pub workers: Option<usize>,
}

/// `MEDRELAY_BENCH_POSTGRES=postgres://...` runs a benchmark against a new schema on that server
/// instead of a new SQLite file (the same code, the other backend).
pub async fn bench_config(base: &str) -> anyhow::Result<String> {
    match std::env::var("MEDRELAY_BENCH_POSTGRES") {
        Ok(server) if !server.is_empty() => {
            let url = medrelay_pipeline::store::testing::fresh_schema_url(&server).await?;
            anyhow::ensure!(
                base.contains("[store]\n"),
                "the starter config has no [store]"
            );
            Ok(base.replacen("[store]\n", &format!("[store]\nurl = \"{url}\"\n"), 1))
        }
        _ => Ok(base.to_owned()),
    }
}

/// Peak resident set size of this process so far (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Forty US area codes: with the 736 exchange, 400,000 distinct valid numbers.
const AREA_CODES: [u32; 40] = [
    201, 202, 203, 205, 206, 207, 208, 209, 210, 212, 213, 214, 215, 216, 217, 218, 219, 224, 225,
    228, 229, 231, 234, 239, 240, 248, 251, 252, 253, 254, 256, 260, 262, 267, 269, 270, 272, 276,
    281, 301,
];

const FIRST: &[&str] = &[
    "Alice", "Bruno", "Chen", "Dara", "Emeka", "Fatima", "Goran", "Hana",
];
const LAST: &[&str] = &[
    "Example",
    "Sample",
    "Fixture",
    "Mock",
    "Demo",
    "Synthetic",
    "Placeholder",
];

/// Writes `rows` synthetic rows in the sample OpenEMR layout.
pub fn generate(path: &std::path::Path, rows: u64) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        w,
        "pat_id,first_name,last_name,middle_name,birth_date,startdate,enddate,location,comment,Apt Type,Resource Last Name,Resource First Name,NPI,Phone,WC Apt ID,Status,Opt In"
    )?;
    for i in 0..rows {
        let day = 1 + (i % 28);
        let month = 1 + (i / 28) % 12;
        let hour = 8 + (i % 9);
        let (h12, ampm) = if hour > 12 {
            (hour - 12, "PM")
        } else {
            (hour, if hour == 12 { "PM" } else { "AM" })
        };
        let min = (i % 4) * 15;
        writeln!(
            w,
            "{pid},{f},{l},,01/01/1980,{month:02}/{day:02}/2027 {h12:02}:{min:02} {ampm},{month:02}/{day:02}/2027 {h12:02}:{min2:02} {ampm},Midtown Demo Clinic,FAKE DATA,Office Visit,Placeholder,Jane,1234567893,({area}) 736-{ph:04},{id},-,Y",
            pid = 100000 + i % 400000,
            f = FIRST[(i % 8) as usize],
            l = LAST[(i % 7) as usize],
            min2 = min + 10,
            // One number per patient id (400,000 patients, so each has 2-3 appointments).
            area = AREA_CODES[((i % 400000) / 10000) as usize],
            ph = (i % 400000) % 10000,
            id = 9_000_000 + i,
        )?;
    }
    w.flush()
}

/// A temporary folder with `config` (the starter configuration, maybe edited), its profiles and a
/// fresh secret, loaded: every benchmark starts from an empty store there.
pub fn bench_setup(config: &str) -> anyhow::Result<(tempfile::TempDir, crate::config::Loaded)> {
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("medrelay.toml");
    std::fs::write(&config_path, config)?;
    std::fs::write(
        dir.path().join("profiles.toml"),
        super::init::STARTER_PROFILES,
    )?;
    super::init::write_secret(&dir.path().join("medrelay.key"))?;
    let loaded = load_str(config, &config_path)?;
    Ok((dir, loaded))
}

/// `workers` tasks claim due jobs in batches of 100 and finish each as sent, until none is
/// left; returns (jobs, seconds, jobs claimed more than once).
async fn claim_and_complete(
    store: &medrelay_pipeline::store::Store,
    workers: usize,
) -> anyhow::Result<(u64, f64, u64)> {
    use medrelay_pipeline::store::outbox::JobOutcome;
    let far = jiff::Timestamp::from_second(4_102_444_800)?; // 2100: every job is due
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let batch = store.claim_due(far, 100).await?;
                if batch.is_empty() {
                    return anyhow::Ok(ids);
                }
                for job in &batch {
                    let outcome = JobOutcome::Sent {
                        wamid: format!("wamid.bench.{w}.{}", job.id),
                        body: "{}".into(),
                        contact_hash: "bench".into(),
                        calling_code: None,
                    };
                    store.finish_job(job, &outcome, far).await?;
                    ids.push(job.id);
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    let secs = t.elapsed().as_secs_f64();
    let total = all.len() as u64;
    all.sort_unstable();
    all.dedup();
    Ok((all.len() as u64, secs, total - all.len() as u64))
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let (args, plan) = match command {
        BenchCommand::Csv(a) => (a, false),
        BenchCommand::Plan(a) => (a, true),
        BenchCommand::Mllp(a) => return super::bench_connectors::run(a, o).await,
        BenchCommand::Fhir(a) => return super::bench_connectors::run_fhir(a, o).await,
        BenchCommand::Webhooks(a) => return super::bench_webhooks::run(a, o).await,
    };
    let (dir, loaded) = bench_setup(&bench_config(super::init::STARTER_CONFIG).await?)?;
    let file = dir.path().join("bench.csv");
    let t = Instant::now();
    generate(&file, args.rows)?;
    let size = std::fs::metadata(&file)?.len();
    o.line(format!(
        "generated {} rows ({:.1} MiB) in {:.1} s",
        args.rows,
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    ));
    let rss_before = peak_rss_mib();
    if args.parse_only {
        let connector = loaded
            .csv_connector(Some("legacy"))
            .map_err(anyhow::Error::msg)?;
        let site = &loaded.compiled.sites[&connector.site];
        let t = Instant::now();
        let rows = medrelay_connector_csv::open(
            &file,
            &loaded.profiles[&connector.profile],
            medrelay_connector_csv::ImportOptions {
                source: connector.name.clone(),
                site: site.name.clone(),
                site_time_zone: site.time_zone.clone(),
                default_region: site.default_region.clone(),
                as_of: jiff::Timestamp::now(),
            },
        )?;
        let (mut ok, mut bad) = (0u64, 0u64);
        for r in rows {
            match r {
                medrelay_connector_csv::RowResult::Event(_)
                | medrelay_connector_csv::RowResult::Status(_) => ok += 1,
                medrelay_connector_csv::RowResult::Bad(_) => bad += 1,
            }
        }
        let secs = t.elapsed().as_secs_f64();
        o.line(format!(
            "read and mapped {ok} rows ({bad} bad) in {secs:.2} s ({:.0} rows/s), no database; peak RSS {:.1} MiB",
            ok as f64 / secs,
            peak_rss_mib().unwrap_or(f64::NAN)
        ));
        return Ok(exit::OK);
    }
    let store = open_store(&loaded).await?;
    // Plan as if it were the start of 2027, so every reminder is in the future.
    let clock: Arc<dyn medrelay_pipeline::clock::Clock> = if plan {
        Arc::new(ManualClock::new("2026-12-31T00:00:00Z".parse()?))
    } else {
        Arc::new(SystemClock)
    };
    let service = build_service(&loaded, store.clone(), clock)?;
    let connector = loaded
        .csv_connector(Some("legacy"))
        .map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    let r = import_csv(&service, &loaded, connector, &file, None, |_| {}).await?;
    let secs = t.elapsed().as_secs_f64();
    let rss = peak_rss_mib();
    let mut result = serde_json::json!({
        "rows": r.summary.rows_ok, "rejected": r.summary.rows_bad,
        "import_seconds": secs, "rows_per_second": r.summary.rows_ok as f64 / secs,
        "peak_rss_mib": rss, "peak_rss_mib_before_import": rss_before,
    });
    o.line(format!(
        "imported {} rows in {:.2} s ({:.0} rows/s), {} rejected; peak RSS {:.1} MiB",
        r.summary.rows_ok,
        secs,
        r.summary.rows_ok as f64 / secs,
        r.summary.rows_bad,
        rss.unwrap_or(f64::NAN)
    ));
    if plan {
        let t = Instant::now();
        let p = service.scheduler.plan_pending().await?;
        let secs = t.elapsed().as_secs_f64();
        o.line(format!(
            "planned {} appointments ({} outbox rows) in {:.2} s; peak RSS {:.1} MiB",
            p.appointments,
            p.steps_stored,
            secs,
            peak_rss_mib().unwrap_or(f64::NAN)
        ));
        result["plan_seconds"] = serde_json::json!(secs);
        result["outbox_rows"] = serde_json::json!(p.steps_stored);
        if let Some(workers) = args.workers {
            let (jobs, secs, twice) = claim_and_complete(&store, workers.max(1)).await?;
            o.line(format!(
                "claimed and completed {jobs} jobs with {workers} workers in {secs:.2} s ({:.0} jobs/s); claimed twice: {twice}",
                jobs as f64 / secs
            ));
            result["claim_complete_jobs_per_second"] = serde_json::json!(jobs as f64 / secs);
            result["claimed_twice"] = serde_json::json!(twice);
        }
    }
    if o.json {
        o.json(&result);
    }
    store.close().await;
    Ok(exit::OK)
}
