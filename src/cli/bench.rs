//! `raftlog bench produce|consume|e2e`: end-to-end throughput and latency through the client
//! library, as an application would see them.
//!
//! `produce` keeps `--in-flight` records outstanding per producer and measures each record from
//! `send` to its acknowledgement. `consume` reads the topic from the start to the high
//! watermark seen at start-up. `e2e` produces and tails at once and measures each record from
//! `send` to the moment a consumer sees it (the value starts with the send time).
//! Latencies go into an HDR histogram; the summary gives records/s, MB/s and p50/p99/p99.9/max.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;

use crate::cli::produce::AcksArg;
use crate::cli::{write_stdout, CliError, ClientArgs};
use crate::client::{
    Acks, Admin, ClientError, Cluster, Consumer, ConsumerOptions, NewTopic, OffsetSpec, Producer,
    ProducerOptions, ProducerRecord, IDEMPOTENT_IN_FLIGHT_MAX,
};

/// Largest latency the histograms hold: anything slower is clamped (and shows as max).
const LATENCY_US_MAX: u64 = 60_000_000;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// Produce records and measure send → acknowledgement.
    Produce,
    /// Read the topic from the start and measure throughput.
    Consume,
    /// Produce and tail at once; measure send → seen by a consumer.
    E2e,
}

/// `raftlog bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// How to reach the cluster.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to measure
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// Topic to use; created (with --partitions) when missing
    #[arg(long, default_value = "raftlog-bench")]
    pub topic: String,
    /// Records to produce (split across producers), or to read for `consume`
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Bytes per record value
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Concurrent producers, each with its own client
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Records awaiting acknowledgement per producer
    #[arg(long, default_value_t = 1024)]
    pub in_flight: usize,
    /// When a record counts as acknowledged
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Partitions of the topic when it is created
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Replication factor of the topic when it is created (capped at the number of nodes)
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// Stop producing after this many seconds even if --records is not reached
    #[arg(long, value_name = "S")]
    pub duration: Option<u64>,
    /// Print a JSON summary instead of text
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Debug)]
struct Summary {
    mode: &'static str,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    errors: u64,
    /// Why the first failed record failed, so a run with errors says what went wrong.
    first_error: Option<String>,
}

/// Runs the benchmark and prints its summary.
///
/// # Errors
/// The cluster cannot be reached or the topic cannot be created.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.record_size < 8 && args.mode == BenchMode::E2e {
        return Err(CliError::Usage(
            "e2e needs --record-size of at least 8 (the send time)".into(),
        ));
    }
    let cluster = Cluster::connect(args.client.options()).await?;
    ensure_topic(&cluster, &args).await?;
    let summary = match args.mode {
        BenchMode::Produce => produce(&cluster, &args, None).await?,
        BenchMode::Consume => consume(&cluster, &args).await?,
        BenchMode::E2e => e2e(&cluster, &args).await?,
    };
    let text = if args.json {
        summary.json()
    } else {
        summary.text(args.record_size)
    };
    if let Some(error) = &summary.first_error {
        eprintln!(
            "raftlog: {} records failed; the first because: {error}",
            summary.errors
        );
    }
    write_stdout(format!("{text}\n").as_bytes())
}

async fn ensure_topic(cluster: &Cluster, args: &BenchArgs) -> Result<(), CliError> {
    let admin = Admin::new(cluster.clone());
    if admin.describe_topic(&args.topic).await.is_err() {
        let nodes = admin.describe_cluster().await?.nodes.len().max(1) as u32;
        let topic = NewTopic::new(
            &args.topic,
            args.partitions,
            args.replication_factor.min(nodes),
        );
        match admin.create_topic(&topic).await {
            Ok(_) => {}
            // Another bench created it meanwhile: fine.
            Err(ClientError::Server(error))
                if error.code() == crate::proto::ErrorCode::TopicExists => {}
            Err(error) => return Err(error.into()),
        }
    }
    admin
        .wait_for_leaders(&args.topic, Duration::from_secs(30))
        .await?;
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

fn progress(total: u64) -> ProgressBar {
    // Drawn only when stderr is a terminal: pipes and CI logs get just the summary.
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} records {per_sec} {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A record value of `size` bytes starting with the send time, for e2e latency.
fn value(size: usize) -> Bytes {
    let mut value = BytesMut::with_capacity(size);
    value.put_u64(now_us());
    value.resize(size.max(8), b'x');
    value.truncate(size.max(8));
    value.freeze()
}

async fn produce(
    cluster: &Cluster,
    args: &BenchArgs,
    bar: Option<ProgressBar>,
) -> Result<Summary, CliError> {
    let producers = args.producers.max(1);
    let per_producer = args.records / producers as u64;
    let latency = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let bar = bar.unwrap_or_else(|| progress(per_producer * producers as u64));
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let options = ProducerOptions {
            acks: match args.acks {
                AcksArg::All => Acks::All,
                AcksArg::Leader => Acks::Leader,
            },
            linger_ms: 0,
            // Batches in flight per partition: enough to keep `in_flight` records moving, within
            // what an idempotent producer can keep deduplicated.
            max_in_flight: (args.in_flight / 64).clamp(1, IDEMPOTENT_IN_FLIGHT_MAX),
            queue_records_max: args.in_flight.max(1) * 2,
            ..ProducerOptions::default()
        };
        let producer = Producer::new(cluster.clone(), options).await?;
        let (topic, size, in_flight) =
            (args.topic.clone(), args.record_size, args.in_flight.max(1));
        let (latency, errors, bar) = (latency.clone(), errors.clone(), bar.clone());
        let first_error = first_error.clone();
        tasks.push(tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(in_flight));
            let mut sent = 0u64;
            while sent < per_producer && deadline.is_none_or(|d| Instant::now() < d) {
                let slot = slots.clone().acquire_owned().await.expect("semaphore open");
                let start = Instant::now();
                let delivery = producer
                    .send(ProducerRecord::new(topic.clone(), value(size)))
                    .await;
                let (latency, errors, bar) = (latency.clone(), errors.clone(), bar.clone());
                let first_error = first_error.clone();
                tokio::spawn(async move {
                    let outcome = match delivery {
                        Ok(delivery) => delivery.await.map(|_| ()),
                        Err(error) => Err(error),
                    };
                    if let Err(error) = &outcome {
                        first_error
                            .lock()
                            .expect("first error lock")
                            .get_or_insert_with(|| error.to_string());
                    }
                    if outcome.is_ok() {
                        let us = start.elapsed().as_micros() as u64;
                        let _ = latency
                            .lock()
                            .expect("histogram lock")
                            .record(us.clamp(1, LATENCY_US_MAX));
                        bar.inc(1);
                    } else {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    drop(slot);
                });
                sent += 1;
            }
            // Every slot back means every delivery has been answered.
            let _ = slots.acquire_many(in_flight as u32).await;
            producer.close().await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let latency_us = latency.lock().expect("histogram lock").clone();
    let records = latency_us.len();
    let first_error = first_error.lock().expect("first error lock").take();
    Ok(Summary {
        mode: "produce",
        records,
        bytes: records * args.record_size as u64,
        elapsed,
        latency_us,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        first_error,
    })
}

async fn consume(cluster: &Cluster, args: &BenchArgs) -> Result<Summary, CliError> {
    let mut consumer =
        Consumer::new(cluster.clone(), &args.topic, ConsumerOptions::default()).await?;
    consumer.seek_all(OffsetSpec::Earliest);
    let mut available = 0;
    for partition in consumer.assignment() {
        let bounds = consumer.bounds(partition).await?;
        available += bounds.high_watermark - bounds.log_start_offset;
    }
    let target = available.min(args.records);
    let bar = progress(target);
    let mut latency_us = histogram();
    let (mut records, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    while records < target {
        let poll_started = Instant::now();
        let polled = consumer.poll(Duration::from_millis(500)).await?;
        let _ =
            latency_us.record((poll_started.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX));
        records += polled.len() as u64;
        bytes += polled.iter().map(|r| r.value.len() as u64).sum::<u64>();
        bar.inc(polled.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Summary {
        mode: "consume",
        records,
        bytes,
        elapsed: started.elapsed(),
        latency_us,
        errors: 0,
        first_error: None,
    })
}

async fn e2e(cluster: &Cluster, args: &BenchArgs) -> Result<Summary, CliError> {
    let mut consumer =
        Consumer::new(cluster.clone(), &args.topic, ConsumerOptions::default()).await?;
    // Pin the start to the current high watermarks before producing, so no record is missed.
    for partition in consumer.assignment() {
        let bounds = consumer.bounds(partition).await?;
        consumer.seek(partition, OffsetSpec::At(bounds.high_watermark))?;
    }
    let producing = {
        let (cluster, args) = (cluster.clone(), args.clone());
        tokio::spawn(async move { produce(&cluster, &args, Some(ProgressBar::hidden())).await })
    };
    let mut expected = (args.records / args.producers.max(1) as u64) * args.producers.max(1) as u64;
    let bar = progress(expected);
    let mut latency_us = histogram();
    let (mut records, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    let mut producing = Some(producing);
    let mut produced = None;
    let mut idle_polls = 0;
    while records < expected && idle_polls < 20 {
        // Once producing ends (--duration, or failures), wait only for what was acknowledged.
        if producing.as_ref().is_some_and(|task| task.is_finished()) {
            let summary = producing
                .take()
                .expect("checked above")
                .await
                .map_err(|e| CliError::Usage(format!("producer task failed: {e}")))??;
            expected = summary.records;
            produced = Some(summary);
            if records >= expected {
                break;
            }
        }
        let polled = consumer.poll(Duration::from_millis(500)).await?;
        idle_polls = if polled.is_empty() && producing.is_none() {
            idle_polls + 1
        } else {
            0
        };
        let now = now_us();
        for record in &polled {
            if record.value.len() >= 8 {
                let sent = u64::from_be_bytes(record.value[..8].try_into().expect("8 bytes"));
                let _ = latency_us.record(now.saturating_sub(sent).clamp(1, LATENCY_US_MAX));
            }
            bytes += record.value.len() as u64;
        }
        records += polled.len() as u64;
        bar.inc(polled.len() as u64);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let produced = match (produced, producing) {
        (Some(summary), _) => summary,
        (None, Some(task)) => task
            .await
            .map_err(|e| CliError::Usage(format!("producer task failed: {e}")))??,
        (None, None) => unreachable!("the producer summary is taken when the task is"),
    };
    Ok(Summary {
        mode: "e2e",
        records,
        bytes,
        elapsed,
        latency_us,
        errors: produced.errors,
        first_error: produced.first_error,
    })
}

impl Summary {
    fn rates(&self) -> (f64, f64) {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        (
            self.records as f64 / seconds,
            self.bytes as f64 / seconds / 1e6,
        )
    }

    /// Latency p50, p99, p99.9 and max in milliseconds.
    fn latency_ms(&self) -> [f64; 4] {
        let at = |quantile: f64| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
        [
            at(0.5),
            at(0.99),
            at(0.999),
            self.latency_us.max() as f64 / 1000.0,
        ]
    }

    fn text(&self, record_size: usize) -> String {
        let (records_per_s, mb_per_s) = self.rates();
        let [p50, p99, p999, max] = self.latency_ms();
        let (mode, records, seconds) = (self.mode, self.records, self.elapsed.as_secs_f64());
        format!(
            "{mode}: {records} records of {record_size} B in {seconds:.2} s: {records_per_s:.0} records/s, \
             {mb_per_s:.1} MB/s; latency ms p50 {p50:.3} p99 {p99:.3} p99.9 {p999:.3} max {max:.3}; errors {}",
            self.errors
        )
    }

    fn json(&self) -> String {
        let (records_per_s, mb_per_s) = self.rates();
        let [p50, p99, p999, max] = self.latency_ms();
        let (mode, records, bytes, seconds) = (
            self.mode,
            self.records,
            self.bytes,
            self.elapsed.as_secs_f64(),
        );
        format!(
            "{{\"mode\":\"{mode}\",\"records\":{records},\"bytes\":{bytes},\"seconds\":{seconds:.3},\
             \"records_per_sec\":{records_per_s:.1},\"mb_per_sec\":{mb_per_s:.3},\
             \"latency_ms\":{{\"p50\":{p50:.3},\"p99\":{p99:.3},\"p999\":{p999:.3},\"max\":{max:.3}}},\
             \"errors\":{}}}",
            self.errors
        )
    }
}
