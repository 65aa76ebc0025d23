//! SIGTERM drains the real binary: it stops being ready, finishes the calls
//! in flight, flushes, and exits 0 within the grace period; every deal it
//! acknowledged is on the log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dealmesh_eventlog::Topics;
use dealmesh_proto::v1::ingest_service_client::IngestServiceClient;
use dealmesh_proto::v1::{DealSubmission, Receipt, SubmitDealRequest};
use dealmesh_testkit::TestDatabase;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const GRACE: Duration = Duration::from_secs(15);
/// How long the service may take to start (migrations, topics, binds).
const STARTUP: Duration = Duration::from_secs(60);
const CLIENTS: usize = 4;
/// Upper bound on calls per client, so the load always ends by itself.
const MAX_CALLS_PER_CLIENT: usize = 5_000;
/// Receipts to collect before the signal, so the service is busy.
const RECEIPTS_BEFORE_SIGNAL: usize = 40;

/// The service as a child process, with what it has written to stdout.
struct Service {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl Service {
    async fn start(env: &[(&str, String)]) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dealmesh-ingest"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the ingest binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        // Read stdout to the end, so the service never blocks on a full pipe.
        let (listening_tx, mut listening_rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line)
                        && log["message"] == "listening"
                        && let (Some(listener), Some(addr)) =
                            (log["listener"].as_str(), log["addr"].as_str())
                    {
                        let _ = listening_tx.send((listener.to_owned(), addr.to_owned()));
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }

        let mut bound = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + STARTUP;
        while !(bound.contains_key("grpc") && bound.contains_key("admin")) {
            match tokio::time::timeout_at(deadline, listening_rx.recv()).await {
                Ok(Some((listener, addr))) => {
                    let addr: SocketAddr = addr.parse().expect("a socket address in the log");
                    bound.insert(listener, addr);
                }
                Ok(None) | Err(_) => panic!(
                    "the service did not log its grpc and admin addresses; it said:\n{}",
                    lines.lock().unwrap().join("\n")
                ),
            }
        }
        Service {
            child,
            lines,
            grpc_addr: bound["grpc"],
            admin_addr: bound["admin"],
        }
    }

    fn logged(&self, message: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|log| log["message"] == message)
        })
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// `/readyz`'s status code, or `None` when nothing answers.
    async fn readyz(&self, http: &reqwest::Client) -> Option<u16> {
        http.get(format!("http://{}/readyz", self.admin_addr))
            .send()
            .await
            .ok()
            .map(|response| response.status().as_u16())
    }
}

fn submission(client: usize, call: usize) -> DealSubmission {
    DealSubmission {
        idempotency_key: format!("drain-{client}-{call}"),
        source: "scout-service".into(),
        name: format!("Drain Test {client}-{call}"),
        website: format!("https://drain-{client}-{call}.io"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_calls_in_flight_and_exits_zero() {
    let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
    let prefix = dealmesh_testkit::unique_topic_prefix();
    let topics = Topics::new(&prefix);
    let db = TestDatabase::create().await;
    let service = Service::start(&[
        ("DATABASE_URL", db.url.clone()),
        ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("DEALMESH_TOPIC_PREFIX", prefix.clone()),
        ("DEALMESH_DEAL_LOG_PARTITIONS", "3".into()),
        ("DEALMESH_INGEST_GRPC_ADDR", "127.0.0.1:0".into()),
        ("DEALMESH_INGEST_HTTP_ADDR", "127.0.0.1:0".into()),
        ("DEALMESH_INGEST_ADMIN_ADDR", "127.0.0.1:0".into()),
        ("DEALMESH_SHUTDOWN_GRACE", format!("{}s", GRACE.as_secs())),
        ("DEALMESH_LOG_FORMAT", "json".into()),
        ("DEALMESH_LOG", "info".into()),
    ])
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    while service.readyz(&http).await != Some(200) {
        assert!(
            started.elapsed() < STARTUP,
            "the service never became ready:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Clients submit deals one after another until the service goes away.
    let receipts: Arc<Mutex<Vec<Receipt>>> = Arc::default();
    let signalled = Arc::new(AtomicBool::new(false));
    let after_signal = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client_id in 0..CLIENTS {
        let (receipts, signalled, after_signal) =
            (receipts.clone(), signalled.clone(), after_signal.clone());
        let endpoint = format!("http://{}", service.grpc_addr);
        clients.push(tokio::spawn(async move {
            let mut client = IngestServiceClient::connect(endpoint)
                .await
                .expect("grpc connects");
            for call in 0..MAX_CALLS_PER_CLIENT {
                let request = SubmitDealRequest {
                    deal: Some(submission(client_id, call)),
                };
                let sent_before_signal = !signalled.load(Ordering::SeqCst);
                let answer =
                    tokio::time::timeout(Duration::from_secs(10), client.submit_deal(request))
                        .await;
                match answer {
                    Ok(Ok(response)) => {
                        let receipt = response.into_inner().receipt.expect("a receipt");
                        if sent_before_signal && signalled.load(Ordering::SeqCst) {
                            after_signal.fetch_add(1, Ordering::SeqCst);
                        }
                        receipts.lock().unwrap().push(receipt);
                    }
                    // The service stopped taking calls: this client is done.
                    Ok(Err(_)) | Err(_) => return,
                }
            }
        }));
    }
    let started = Instant::now();
    while receipts.lock().unwrap().len() < RECEIPTS_BEFORE_SIGNAL {
        assert!(
            started.elapsed() < STARTUP,
            "the service acknowledged {} deals in {STARTUP:?}:\n{}",
            receipts.lock().unwrap().len(),
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let pid = service.child.id().expect("the service is running");
    signalled.store(true, Ordering::SeqCst);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {pid} failed");
    let signal_sent = Instant::now();

    // Not ready any more: /readyz answers 503, or nothing answers.
    loop {
        match service.readyz(&http).await {
            Some(200) => {
                assert!(
                    signal_sent.elapsed() < GRACE,
                    "/readyz still answers 200 {GRACE:?} after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Some(code) => {
                assert_eq!(code, 503, "/readyz after SIGTERM");
                break;
            }
            None => break,
        }
    }

    let mut service = service;
    let waited = tokio::time::timeout(GRACE, service.child.wait()).await;
    let Ok(exit) = waited else {
        panic!("still running {GRACE:?} after SIGTERM:\n{}", service.log());
    };
    let exit = exit.expect("wait for the service");
    assert_eq!(exit.code(), Some(0), "exit status:\n{}", service.log());
    assert!(
        service.logged("ingest stopped") && !service.logged("grace period over, exiting"),
        "the service drained instead of running out of grace:\n{}",
        service.log()
    );
    for client in clients {
        client.await.expect("client task");
    }

    let receipts = receipts.lock().unwrap().clone();
    let events = dealmesh_testkit::read_topic(&bootstrap, &topics.deals).await;
    let on_log: BTreeMap<String, (i32, i64)> = events
        .iter()
        .map(|record| {
            let event: dealmesh_proto::DealEvent =
                prost::Message::decode(record.value.as_deref().unwrap_or_default())
                    .expect("a deal event");
            (event.event_id, (record.partition, record.offset))
        })
        .collect();
    let lost: Vec<&Receipt> = receipts
        .iter()
        .filter(|receipt| {
            on_log.get(&receipt.event_id) != Some(&(receipt.partition, receipt.offset))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged deals are not on the log where their receipt says: {lost:?}",
        lost.len(),
        receipts.len()
    );
    assert!(receipts.iter().all(|receipt| !receipt.duplicate));
    // Calls sent before the signal and answered OK after it: the drain
    // finished them instead of cutting them off.
    assert!(
        after_signal.load(Ordering::SeqCst) > 0,
        "no call in flight at SIGTERM was answered"
    );
    eprintln!(
        "{} deals acknowledged, {} of them answered after SIGTERM was sent; {} events on the log",
        receipts.len(),
        after_signal.load(Ordering::SeqCst),
        events.len()
    );
}
