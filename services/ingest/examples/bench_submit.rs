//! `SubmitDeals` throughput of the real ingest binary, against a bare
//! producer sending the same records to the same broker.
//!
//! ```text
//! export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
//! cargo build --release -p dealmesh-ingest --bin dealmesh-ingest --example bench_submit
//! cargo run --release -p dealmesh-ingest --example bench_submit -- --deals 20000 --batch 500 --clients 4
//! ```
//!
//! 1. Starts `dealmesh-ingest serve` (the release binary next to this
//!    example, or `--ingest-bin`) against a fresh PostgreSQL database and
//!    fresh topics, on the broker at `--bootstrap` or, without it, the test
//!    broker of `dealmesh-testkit` (a tansu on a free port; see
//!    `DEALMESH_TEST_KAFKA_BOOTSTRAP` and `DEALMESH_TEST_DATABASE_URL`).
//! 2. `--clients` gRPC clients send `--deals` deals in `SubmitDeals` batches of
//!    `--batch`; the rate counts deals acknowledged (every result a receipt).
//! 3. Reads the envelopes ingest wrote back from the log and hands them, in
//!    submission order, to a child process that sends them to a fresh topic
//!    with the same partition count through `EventProducer`: the rdkafka
//!    producer ingest uses, with its settings (idempotent, `acks=all`, lz4,
//!    `linger.ms=5`) and the same key and headers, but no gRPC and no
//!    PostgreSQL. Same shape: `--clients` tasks, each sending a batch of
//!    `--batch` and waiting for every acknowledgement before the next.
//! 4. Prints both rates, the ratio, each process's peak resident memory
//!    (`VmHWM`; the bare producer's includes every envelope it holds), and
//!    the CPU time per deal of ingest, of the PostgreSQL backends serving it,
//!    of the gRPC clients (this process), of the bare producer and, in each
//!    phase, of the broker when it is a tansu on this machine (from
//!    `/proc/<pid>/task/*/schedstat`), and how busy the whole machine was
//!    in each phase (`/proc/stat`): on a machine that runs the broker,
//!    PostgreSQL, ingest and the clients side by side, a phase at 100% is
//!    bound by CPU, not by waiting. The machine's busy CPU time per deal in
//!    each phase is set beside what its cores allow per deal at 80% of the
//!    bare rate: a phase costing more than that cannot reach 80% here.
//!
//! `--rounds N` repeats all of it N times, each round on a fresh database
//! and fresh topics, and closes with the median, lowest and highest ratio:
//! on a shared machine one round's ratio can be off by a tenth either way.
//!
//! A warm-up batch on each side (connections, metadata) is not timed.
//! `--ingest-env` and `--pg-setup` try a setting or a schema change. The
//! memory engine's high-watermark quirk does not matter here: the records
//! are read back up to partition EOF, and nothing reads watermarks.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics};
use dealmesh_proto::DealEvent;
use dealmesh_proto::v1::ingest_service_client::IngestServiceClient;
use dealmesh_proto::v1::submit_deals_result::Outcome;
use dealmesh_proto::v1::{DealSubmission, SubmitDealsRequest};
use serde_json::json;
use tracing::Instrument;

#[derive(Parser, Clone)]
struct Args {
    /// Deals to submit (timed).
    #[arg(long, default_value_t = 20_000)]
    deals: usize,
    /// Deals per `SubmitDeals` call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Rounds to run one after the other, each on a fresh database and
    /// fresh topics; with more than one, the median, lowest and highest
    /// ratio close the report (the machine's noise shows in their spread).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Partitions of the deal log and of the bare producer's topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Broker to use; default: the testkit broker.
    #[arg(long)]
    bootstrap: Option<String>,
    /// The ingest binary; default: `dealmesh-ingest` beside `examples/`.
    #[arg(long)]
    ingest_bin: Option<PathBuf>,
    /// Extra `KEY=VALUE` environment for ingest, applied last; `{database_url}`
    /// in a value is the fresh database's URL, e.g.
    /// `DATABASE_URL={database_url}?options=-c%20synchronous_commit%3Doff`.
    #[arg(long = "ingest-env", value_name = "KEY=VALUE")]
    ingest_env: Vec<String>,
    /// SQL run on ingest's fresh database once it has migrated it, before
    /// the warm-up: to try a schema or storage change, e.g.
    /// `ALTER TABLE ingest_batches SET (fillfactor = 70)`.
    #[arg(long, value_name = "SQL")]
    pg_setup: Option<String>,
    /// Internal: run as the bare producer over this file of records.
    #[arg(long, hide = true)]
    bare_input: Option<PathBuf>,
    #[arg(long, hide = true)]
    bare_prefix: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    bare_warmup: usize,
    #[arg(long, hide = true)]
    bare_broker_pid: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.deals > 0 && args.batch > 0 && args.clients > 0 && args.rounds > 0,
        "--deals, --batch, --clients and --rounds must be at least 1"
    );
    if let Some(input) = &args.bare_input {
        return bare_producer(&args, input).await;
    }

    let bootstrap = match &args.bootstrap {
        Some(bootstrap) => bootstrap.clone(),
        None => dealmesh_testkit::kafka_bootstrap().await,
    };
    let mut ratios = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round} of {}", args.rounds);
        }
        ratios.push(run_round(&args, &bootstrap).await?);
    }
    if args.rounds > 1 {
        ratios.sort_by(f64::total_cmp);
        let median = if ratios.len() % 2 == 1 {
            ratios[ratios.len() / 2]
        } else {
            (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0
        };
        println!(
            "over {} rounds: ratio median {:.1}%, lowest {:.1}%, highest {:.1}% (target 80%: {})",
            args.rounds,
            median * 100.0,
            ratios[0] * 100.0,
            ratios[ratios.len() - 1] * 100.0,
            if median >= 0.8 { "met" } else { "missed" }
        );
    }
    Ok(())
}

/// One round: ingest on a fresh database and topics, then the bare
/// producer on a fresh topic; prints the round's report and returns the
/// ratio of the two rates.
async fn run_round(args: &Args, bootstrap: &str) -> anyhow::Result<f64> {
    let db = dealmesh_testkit::TestDatabase::create().await;
    let prefix = dealmesh_testkit::unique_topic_prefix();
    let warmup = args.batch.min(200);
    println!(
        "broker {bootstrap}, database {}, {} deals in batches of {} from {} clients, {} partitions",
        db.name, args.deals, args.batch, args.clients, args.partitions
    );

    let mut ingest = Ingest::start(args, bootstrap, &db.url, &prefix).await?;
    if let Some(sql) = &args.pg_setup {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&db.pool)
            .await
            .context("--pg-setup failed")?;
    }
    let clients = connect_and_warm_up(args, ingest.grpc, warmup).await?;
    // CPU the timed phase costs ingest and the PostgreSQL backends serving
    // it (backends the pool opens during the phase count from their start).
    let ingest_pid = ingest.child.id();
    let ingest_cpu = || ingest_pid.and_then(cpu_secs).unwrap_or_default();
    let own_cpu = || cpu_secs(std::process::id()).unwrap_or_default();
    let broker_pid = broker_pid(bootstrap);
    let backends_before = backends(&db.pool).await?;
    let (ingest_cpu0, pg_cpu0, client_cpu0) = (ingest_cpu(), cpu_of(&backends_before), own_cpu());
    let broker_cpu0 = broker_pid.and_then(cpu_secs);
    let machine0 = machine_ticks();
    let ingest_result = submit_timed(args, clients).await;
    let machine_busy = busy_share(machine0, machine_ticks());
    let client_cpu = own_cpu() - client_cpu0;
    let ingest_broker_cpu = cpu_since(broker_pid, broker_cpu0);
    let mut backends_after = backends(&db.pool).await?;
    backends_after.extend(backends_before);
    backends_after.sort_unstable();
    backends_after.dedup();
    let (ingest_cpu, pg_cpu) = (
        ingest_cpu() - ingest_cpu0,
        cpu_of(&backends_after) - pg_cpu0,
    );
    let ingest_hwm = dealmesh_testkit::peak_rss_kib(ingest_pid);
    ingest.stop().await?;
    let ingest_elapsed = ingest_result?;
    let ingest_rate = args.deals as f64 / ingest_elapsed.as_secs_f64();

    // The records ingest wrote, in the order they were submitted.
    let deals_topic = format!("{prefix}deals");
    let mut records = dealmesh_testkit::read_topic(bootstrap, &deals_topic).await;
    ensure!(
        records.len() == warmup + args.deals,
        "the deal log holds {} records, expected {}",
        records.len(),
        warmup + args.deals
    );
    let order = |record: &dealmesh_testkit::TopicRecord| -> (bool, usize) {
        let event: dealmesh_proto::DealEvent =
            prost::Message::decode(record.value.as_deref().unwrap_or_default()).unwrap_or_default();
        let key = event.idempotency_key;
        let index = key
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or(usize::MAX);
        (!key.starts_with("warmup-"), index)
    };
    records.sort_by_cached_key(order);
    // One encoded envelope per line, hex: the bare producer re-sends them.
    let input = tempfile::NamedTempFile::new()?;
    {
        let mut out = std::io::BufWriter::new(input.as_file());
        for record in &records {
            out.write_all(hex::encode(record.value.as_deref().unwrap_or_default()).as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    drop(records);

    let bare_prefix = format!("{prefix}bare.");
    dealmesh_testkit::create_topic(bootstrap, &Topics::new(&bare_prefix).deals, args.partitions)
        .await;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--bootstrap", bootstrap, "--bare-prefix", &bare_prefix])
        .arg("--bare-input")
        .arg(input.path())
        .args(["--bare-warmup", &warmup.to_string()])
        .args(["--deals", &args.deals.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--clients", &args.clients.to_string()])
        .args(broker_pid.map(|pid| format!("--bare-broker-pid={pid}")))
        .stderr(Stdio::inherit())
        .output()
        .await?;
    ensure!(output.status.success(), "the bare producer failed");
    let bare: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("the bare producer's report is not JSON")?;
    let bare_rate = bare["deals_per_sec"].as_f64().unwrap_or_default();
    let bare_hwm = bare["vm_hwm_kib"].as_u64();

    let ratio = ingest_rate / bare_rate;
    let mib = |kib: Option<u64>| {
        kib.map_or("n/a".to_owned(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    println!(
        "ingest SubmitDeals: {ingest_rate:>9.0} deals/s  ({} deals in {:.2}s)  peak RSS {}",
        args.deals,
        ingest_elapsed.as_secs_f64(),
        mib(ingest_hwm)
    );
    println!(
        "bare producer:      {bare_rate:>9.0} deals/s  ({} deals in {:.2}s)  peak RSS {}",
        args.deals,
        bare["elapsed_secs"].as_f64().unwrap_or_default(),
        mib(bare_hwm)
    );
    let per_deal = |secs: f64| secs * 1e6 / args.deals as f64;
    let micros =
        |secs: Option<f64>| secs.map_or("n/a".to_owned(), |s| format!("{:.1}", per_deal(s)));
    println!(
        "CPU per deal: ingest {:.1} us + its PostgreSQL backends {:.1} us + the gRPC clients {:.1} us \
         + the broker {} us; bare producer {:.1} us + the broker {} us",
        per_deal(ingest_cpu),
        per_deal(pg_cpu),
        per_deal(client_cpu),
        micros(ingest_broker_cpu),
        per_deal(bare["cpu_secs"].as_f64().unwrap_or_default()),
        micros(bare["broker_cpu_secs"].as_f64()),
    );
    let percent =
        |share: Option<f64>| share.map_or("n/a".to_owned(), |s| format!("{:.0}%", s * 100.0));
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    println!(
        "machine CPU busy ({cores} cores): {} while ingest ran, {} while the bare producer ran",
        percent(machine_busy),
        percent(bare["machine_busy"].as_f64()),
    );
    // Everything on the machine, per deal: the phase's busy CPU time over
    // its deals. At 80% of the bare rate, all of it must fit in the cores.
    let machine_per_deal =
        |busy: Option<f64>, elapsed: f64| micros(busy.map(|share| share * cores * elapsed));
    println!(
        "machine CPU per deal: {} us while ingest ran, {} us while the bare producer ran; \
         at 80% of the bare rate the {cores} cores allow {:.1} us",
        machine_per_deal(machine_busy, ingest_elapsed.as_secs_f64()),
        machine_per_deal(
            bare["machine_busy"].as_f64(),
            bare["elapsed_secs"].as_f64().unwrap_or_default()
        ),
        cores * 1e6 / (0.8 * bare_rate),
    );
    println!(
        "ratio: {:.1}% of the bare producer (target 80%: {})",
        ratio * 100.0,
        if ratio >= 0.8 { "met" } else { "missed" }
    );
    // Benchmark databases are large: leave none behind.
    db.drop_database().await;
    Ok(ratio)
}

/// The ingest binary as a child process.
struct Ingest {
    child: tokio::process::Child,
    grpc: std::net::SocketAddr,
}

impl Ingest {
    async fn start(
        args: &Args,
        bootstrap: &str,
        database_url: &str,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let bin = match &args.ingest_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?
                .parent()
                .and_then(|examples| examples.parent())
                .map(|dir| dir.join("dealmesh-ingest"))
                .context("no directory above this example")?,
        };
        ensure!(
            bin.is_file(),
            "{} not found: build it with `cargo build --release -p dealmesh-ingest --bin \
             dealmesh-ingest`, or pass --ingest-bin",
            bin.display()
        );
        let mut command = tokio::process::Command::new(&bin);
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("DEALMESH_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("DEALMESH_TOPIC_PREFIX", prefix)
            .env("DEALMESH_DEAL_LOG_PARTITIONS", args.partitions.to_string())
            .env(
                "DEALMESH_INGEST_MAX_BATCH",
                args.batch.max(1000).to_string(),
            )
            .env("DEALMESH_INGEST_GRPC_ADDR", "127.0.0.1:0")
            .env("DEALMESH_INGEST_HTTP_ADDR", "127.0.0.1:0")
            .env("DEALMESH_INGEST_ADMIN_ADDR", "127.0.0.1:0")
            .env("DEALMESH_LOG_FORMAT", "json")
            // Its default level: it logs nothing per request.
            .env("DEALMESH_LOG", "info");
        for pair in &args.ingest_env {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--ingest-env {pair:?}: expected KEY=VALUE"))?;
            command.env(key, value.replace("{database_url}", database_url));
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Keeps reading until the process ends, so it never blocks on stdout.
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line)
                    && log["message"] == "listening"
                    && log["listener"] == "grpc"
                    && let Some(addr) = log["addr"].as_str()
                {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .context("ingest did not log its gRPC address within 60s")?
            .context("ingest exited before listening")?;
        Ok(Self {
            child,
            grpc: addr.parse()?,
        })
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("ingest did not exit within 60s of SIGTERM")??;
        ensure!(status.success(), "ingest exited with {status}");
        Ok(())
    }
}

fn deal(prefix: &str, index: usize) -> DealSubmission {
    DealSubmission {
        idempotency_key: format!("{prefix}-{index}"),
        source: "bench".into(),
        name: format!("Bench Company {prefix} {index}"),
        website: format!("https://{prefix}-company-{index}.io"),
        description: "A company submitted by the ingest benchmark.".into(),
        ..Default::default()
    }
}

type Client = IngestServiceClient<tonic::transport::Channel>;

/// Connects the clients and submits the warm-up batch.
async fn connect_and_warm_up(
    args: &Args,
    grpc: std::net::SocketAddr,
    warmup: usize,
) -> anyhow::Result<Vec<Client>> {
    let endpoint = format!("http://{grpc}");
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        // One connection per client, as separate callers would have.
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect()
            .await?;
        clients.push(IngestServiceClient::new(channel).max_decoding_message_size(64 << 20));
    }
    let warmup_deals: Vec<_> = (0..warmup).map(|i| deal("warmup", i)).collect();
    submit_batch(&mut clients[0], warmup_deals).await?;
    Ok(clients)
}

/// Submits `args.deals` deals from every client at once; the time it took.
/// The requests are built before the clock starts and each is sent as
/// built, as the bare producer sends its envelopes from memory.
async fn submit_timed(args: &Args, clients: Vec<Client>) -> anyhow::Result<Duration> {
    let deals: Vec<DealSubmission> = (0..args.deals).map(|i| deal("bench", i)).collect();
    let batches: Vec<Vec<DealSubmission>> = deals
        .chunks(args.batch)
        .map(<[DealSubmission]>::to_vec)
        .collect();
    drop(deals);
    let batches = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let batches = batches.clone();
            tokio::spawn(async move {
                loop {
                    let next = batches.lock().expect("not poisoned").next();
                    let Some(batch) = next else {
                        return anyhow::Ok(());
                    };
                    submit_batch(&mut client, batch).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

async fn submit_batch(client: &mut Client, deals: Vec<DealSubmission>) -> anyhow::Result<()> {
    let count = deals.len();
    let results = client
        .submit_deals(SubmitDealsRequest { deals })
        .await?
        .into_inner()
        .results;
    ensure!(
        results.len() == count,
        "{count} deals sent, {} results",
        results.len()
    );
    for result in results {
        match result.outcome {
            Some(Outcome::Receipt(receipt)) if !receipt.duplicate => {}
            other => bail!("deal {} not acknowledged: {other:?}", result.index),
        }
    }
    Ok(())
}

/// An event and its encoding, as ingest sent it.
type Envelope = (DealEvent, Vec<u8>);

/// The child process: sends the envelopes with a bare producer and prints
/// a JSON report.
async fn bare_producer(args: &Args, input: &std::path::Path) -> anyhow::Result<()> {
    let prefix = args.bare_prefix.clone().context("--bare-prefix")?;
    let bootstrap = args.bootstrap.clone().context("--bootstrap")?;
    // The propagator, so records carry `traceparent` as ingest's do.
    let telemetry = dealmesh_runtime::telemetry::TelemetryConfig::from_source(
        &dealmesh_runtime::config::MapSource::new([("DEALMESH_LOG", "warn")]),
        "bench-bare-producer",
    )?;
    let _telemetry = dealmesh_runtime::telemetry::init(&telemetry)?;
    let mut events = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(input)?).lines() {
        let bytes = hex::decode(line?)?;
        let event: DealEvent = prost::Message::decode(bytes.as_slice())?;
        events.push((event, bytes));
    }
    ensure!(
        events.len() == args.bare_warmup + args.deals,
        "input holds {} records",
        events.len()
    );

    let producer = EventProducer::new(
        &KafkaSettings::new(&bootstrap, &prefix),
        Topics::new(&prefix),
        dealmesh_ingest::ingestor::CE_SOURCE,
    )?;
    let timed = events.split_off(args.bare_warmup);
    send_batch(&producer, &events).await?;

    let timed = Arc::new(timed);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_secs(std::process::id()).unwrap_or_default();
    let broker_before = args.bare_broker_pid.and_then(cpu_secs);
    let machine_before = machine_ticks();
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            let (producer, timed, next) = (producer.clone(), timed.clone(), next.clone());
            let batch_size = args.batch;
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(1, Ordering::Relaxed) * batch_size;
                    if start >= timed.len() {
                        return anyhow::Ok(());
                    }
                    let end = (start + batch_size).min(timed.len());
                    send_batch(&producer, &timed[start..end]).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let machine_busy = busy_share(machine_before, machine_ticks());
    let cpu = cpu_secs(std::process::id()).unwrap_or_default() - cpu_before;
    let broker_cpu = cpu_since(args.bare_broker_pid, broker_before);
    let report = json!({
        "deals_per_sec": args.deals as f64 / elapsed.as_secs_f64(),
        "elapsed_secs": elapsed.as_secs_f64(),
        "cpu_secs": cpu,
        "broker_cpu_secs": broker_cpu,
        "machine_busy": machine_busy,
        "vm_hwm_kib": dealmesh_testkit::peak_rss_kib(Some(std::process::id())),
    });
    println!("{report}");
    Ok(())
}

/// Sends every envelope of a batch at once, in one span as a `SubmitDeals`
/// call is, and waits for every acknowledgement.
async fn send_batch(producer: &EventProducer, batch: &[Envelope]) -> anyhow::Result<()> {
    producer
        .publish_all_encoded(batch.iter().map(|(event, bytes)| (event, bytes.as_slice())))
        .instrument(tracing::info_span!("bare_batch"))
        .await?;
    Ok(())
}

/// The PostgreSQL backends connected to the database `pool` is on, but
/// for the one asking.
async fn backends(pool: &sqlx::PgPool) -> anyhow::Result<Vec<u32>> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()",
    )
    .fetch_all(pool)
    .await?;
    Ok(pids
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect())
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_secs(pid)).sum()
}

/// The broker process listening at `bootstrap`, if it runs on this
/// machine as a tansu (the testkit's or one started by hand), found by its
/// command line: its CPU time counts in each phase.
fn broker_pid(bootstrap: &str) -> Option<u32> {
    let listener = format!("tcp://{bootstrap}");
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let mut args = cmdline.split(|&b| b == 0);
        let program = args.next()?;
        let is_tansu = program.ends_with(b"tansu");
        (is_tansu && args.any(|arg| arg == listener.as_bytes())).then_some(pid)
    })
}

/// CPU time `pid` has used since it had used `before`.
fn cpu_since(pid: Option<u32>, before: Option<f64>) -> Option<f64> {
    Some(cpu_secs(pid?)? - before?)
}

/// CPU time a process's threads have used so far, from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU).
fn cpu_secs(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let nanos: u64 = tasks
        .filter_map(|task| {
            let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            schedstat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Some(nanos as f64 / 1e9)
}

/// The whole machine's busy and total CPU time so far, in clock ticks, from
/// the first line of `/proc/stat` (idle and iowait are not busy).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// The share of the machine's CPU time that was busy between two readings
/// (clock ticks: a phase under a second is measured to a few percent).
fn busy_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((busy0, total0), (busy1, total1)) = (before?, after?);
    let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
    Some(busy1.saturating_sub(busy0) as f64 / total as f64)
}
