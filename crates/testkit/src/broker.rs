//! The test broker: the one `scripts/test` started, or a tansu of our own.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use std::{env, fs, process, thread};

/// Set by `scripts/test` to the broker it started for the whole run.
const BOOTSTRAP_ENV: &str = "DEALMESH_TEST_KAFKA_BOOTSTRAP";

/// How long a fresh tansu may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Keeps a broker alive exactly as long as the process that holds the pipe
/// to its standard input (see [`Broker`]). Arguments: work dir, then the
/// broker command line.
///
/// fd 3 keeps the pipe because sh gives background jobs /dev/null as stdin.
/// fd 4 keeps the caller's stderr for the log of a broker that failed to
/// start; everything else the shell might say (like "Killed" about its job)
/// goes to /dev/null, and SIGPIPE is ignored, because by the time the broker
/// is killed the caller's end of stderr is usually gone and writing to it
/// would kill the wrapper before it cleans up.
const WRAPPER: &str = r#"
trap '' PIPE
dir=$1; shift
exec 3<&0 4>&2 2>/dev/null
cd "$dir"
"$@" >broker.log 2>&1 3<&- 4>&- &
broker=$!
{ read -r _ <&3 || true; kill -9 "$broker"; } 4>&- &
watcher=$!
wait "$broker"; status=$?
kill "$watcher"; wait "$watcher"
[ "$status" -eq 0 ] || cat broker.log >&4
cd / && rm -rf "$dir"
exit "$status"
"#;

/// A tansu started by this test process, shared by all its tests.
///
/// A `static` is never dropped, so no destructor can be relied on to stop
/// the broker. Instead, tansu runs under [`WRAPPER`], whose standard input is
/// a pipe whose only writer is `child`'s stdin handle, held in this struct
/// and so by the test process until it ends. However the process ends (tests
/// done, panic, Ctrl-C, SIGKILL), the kernel closes that end, the wrapper's
/// `read` sees end-of-file and kills the broker. The pipe is close-on-exec,
/// so processes the tests spawn do not keep it open.
struct Broker {
    bootstrap: String,
    _child: Child,
}

static BROKER: OnceLock<Broker> = OnceLock::new();

/// Bootstrap servers of the test broker: `DEALMESH_TEST_KAFKA_BOOTSTRAP` if
/// set (`scripts/test` sets it); otherwise one tansu per test process, with
/// the memory storage engine on a free loopback port, stopped when the
/// process exits.
///
/// tansu is taken from `TANSU_BIN`, else `PATH`, else `~/.cargo/bin/tansu`,
/// else `${DEALMESH_TOOLS:-~/.cache/dealmesh}/bin/tansu`; `scripts/ensure-tools`
/// installs it.
pub async fn kafka_bootstrap() -> String {
    if let Some(bootstrap) = env::var(BOOTSTRAP_ENV).ok().filter(|b| !b.is_empty()) {
        return bootstrap;
    }
    if let Some(broker) = BROKER.get() {
        return broker.bootstrap.clone();
    }
    // Concurrent first callers block in `get_or_init` until one broker is up.
    crate::blocking(|| BROKER.get_or_init(Broker::start).bootstrap.clone()).await
}

impl Broker {
    fn start() -> Broker {
        let tansu = find_tansu();
        // The port is free when picked but another process may take it before
        // tansu binds it; tansu then exits and we try another.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Broker::try_start(&tansu) {
                Ok(broker) => return broker,
                Err(err) => last_error = err,
            }
        }
        panic!(
            "test broker {} did not start: {last_error}",
            tansu.display()
        );
    }

    fn try_start(tansu: &Path) -> Result<Broker, String> {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let dir = env::temp_dir().join(format!("dealmesh-tansu-{}-{port}", process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

        let mut child = Command::new("sh")
            .args(["-c", WRAPPER, "dealmesh-tansu"])
            .arg(&dir)
            .arg(tansu)
            .args(["broker", "--cluster-id", "dealmesh-test"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // tansu reads its settings (and RUST_LOG, OTLP endpoint) from the
            // environment too; a test's environment must not leak into it.
            .env_clear()
            .env("PATH", env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;

        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Err(format!("it exited: {}", stop(child)));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(Broker {
                    bootstrap: format!("127.0.0.1:{port}"),
                    _child: child,
                });
            }
            if Instant::now() > deadline {
                let log = stop(child);
                return Err(format!(
                    "no connection on port {port} after {STARTUP_TIMEOUT:?}: {log}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Stops a broker that failed to come up and returns what it logged.
fn stop(mut child: Child) -> String {
    // Closing the pipe makes the wrapper kill the broker and print its log.
    drop(child.stdin.take());
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    let _ = child.wait();
    log.trim().to_owned()
}

fn find_tansu() -> PathBuf {
    if let Some(bin) = env::var_os("TANSU_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let on_path = env::var_os("PATH")
        .map(|path| {
            env::split_paths(&path)
                .map(|dir| dir.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let tools = env::var_os("DEALMESH_TOOLS")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/dealmesh"));
    on_path
        .into_iter()
        .chain([home.join(".cargo/bin/tansu"), tools.join("bin/tansu")])
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tansu (the test Kafka broker) not found in TANSU_BIN, PATH, ~/.cargo/bin or \
                 {}/bin: run scripts/ensure-tools, or run the tests with scripts/test",
                tools.display()
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("no free loopback port for the test broker")
        .port()
}
