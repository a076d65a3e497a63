//! SASL/SCRAM on a real broker: a Tansu of this test's own, started with
//! `--authentication` on 127.0.0.1:9097 (data in `target/xkafka-broker-sasl`),
//! with a SCRAM-SHA-512 user created by `tansu user create`.
//!
//! * the right password: a message makes the round trip;
//! * a wrong password: `publish` fails, both error handlers receive
//!   librdkafka's authentication error, the consumer stops, all within
//!   bounds — and neither password shows up in `Debug` output, errors,
//!   logs (xkafka's and librdkafka's, at debug level) or metrics.
//!
//! Tansu 0.6's authentication knows SCRAM-SHA-256/512 only: its SASL library
//! (rsasl) is built without PLAIN, and a PLAIN handshake makes it close the
//! connection. The PLAIN test pins that down; if Tansu ever accepts PLAIN it
//! fails, and PLAIN needs a round trip of its own (Tansu's PLAIN check, once
//! compiled in, only requires a password to be present).
//!
//! tansu is found in `$XKAFKA_BROKER_PREFIX/bin` (default
//! `/opt/xkafka-broker`, installed by `scripts/broker.sh install`); without it
//! the tests fail, they never skip.
#![cfg(feature = "sasl")]

mod common;

use std::fs::{self, File};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use common::captured_debug_logs as logs;
use xkafka::rdkafka::error::RDKafkaErrorCode;
use xkafka::{Ack, Config, Consumer, Decision, Error, Message, Producer};

const ADDR: &str = "127.0.0.1:9097";
const URL: &str = "tcp://127.0.0.1:9097";
const USER: &str = "xkafka-app";
const MECHANISM: &str = "SCRAM-SHA-512";
/// Distinctive values: any occurrence in output is a leak.
const PASSWORD: &str = "xk-scram-pw-2c9e71a4";
const WRONG: &str = "xk-wrong-pw-8b3d05f6";
const KEY_PASSWORD: &str = "xk-key-pw-61f0d9c3";
const SECRETS: [&str; 3] = [PASSWORD, WRONG, KEY_PASSWORD];

// ---------------------------------------------------------------------------
// The broker

/// A running Tansu with authentication; killed when the last test using it
/// lets go.
struct SaslBroker(Option<Tansu>);

/// The broker the running tests share (one start per test binary when the
/// tests overlap, which they do by default).
static SHARED: Mutex<Weak<SaslBroker>> = Mutex::new(Weak::new());

fn sasl_broker() -> Arc<SaslBroker> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(broker) = shared.upgrade() {
        return broker;
    }
    let broker = Arc::new(SaslBroker::start());
    *shared = Arc::downgrade(&broker);
    broker
}

impl SaslBroker {
    /// A fresh broker: starts without authentication to create the SCRAM
    /// user (Tansu refuses every request but the SASL ones from an
    /// unauthenticated client, `tansu user create` included), then restarts
    /// on the same sqlite file with `--authentication`.
    fn start() -> Self {
        let tansu = tansu();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("xkafka-broker-sasl");
        stop_leftover(&dir);
        wait_until(
            "127.0.0.1:9097 is free",
            || !port_open(),
            Duration::from_secs(10),
        );
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove the old broker data");
        }
        fs::create_dir_all(&dir).expect("create the broker data dir");

        let setup = Tansu::start(&tansu, &dir, false);
        let started = Instant::now();
        let status = Command::new(&tansu)
            .args(["user", "create", "--broker", URL, "--mechanism", "scram512"])
            .args([USER, PASSWORD])
            .env("RUST_LOG", "warn")
            .status()
            .expect("run tansu user create");
        assert!(status.success(), "tansu user create: {status}");
        eprintln!("SCRAM user created in {:?}", started.elapsed());
        drop(setup); // killed and waited for: the port is free again

        SaslBroker(Some(Tansu::start(&tansu, &dir, true)))
    }
}

impl Drop for SaslBroker {
    fn drop(&mut self) {
        // Under the lock: a test starting the next broker waits until this
        // one is gone.
        let _shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.0.take());
    }
}

fn tansu() -> PathBuf {
    let prefix = std::env::var_os("XKAFKA_BROKER_PREFIX")
        .map_or_else(|| PathBuf::from("/opt/xkafka-broker"), PathBuf::from);
    let tansu = prefix.join("bin").join("tansu");
    assert!(
        tansu.is_file(),
        "no tansu at {}: run scripts/broker.sh install (or set XKAFKA_BROKER_PREFIX to where it is)",
        tansu.display()
    );
    tansu
}

fn port_open() -> bool {
    TcpStream::connect_timeout(&ADDR.parse().unwrap(), Duration::from_millis(200)).is_ok()
}

/// A tansu broker process in `dir`, killed (and waited for) on drop.
struct Tansu {
    child: Child,
    dir: PathBuf,
}

impl Tansu {
    /// Starts it and waits until it accepts connections.
    fn start(tansu: &Path, dir: &Path, authentication: bool) -> Self {
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .expect("broker log");
        let mut command = Command::new(tansu);
        command
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                URL,
                "--advertised-listener-url",
                URL,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log);
        if authentication {
            command.arg("--authentication");
        }
        let child = command.spawn().expect("start tansu");
        fs::write(dir.join("tansu.pid"), child.id().to_string()).expect("pid file");
        let mut running = Tansu {
            child,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_open() {
            if let Some(status) = running.child.try_wait().expect("broker status") {
                panic!("tansu exited during start ({status}):\n{}", running.log());
            }
            assert!(
                Instant::now() < deadline,
                "tansu not listening on {ADDR} after 20 s:\n{}",
                running.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        running
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(self.dir.join("tansu.pid"));
    }
}

/// Kills a broker an earlier, aborted run of these tests left behind (its
/// pid file is in our data dir, and it runs there).
fn stop_leftover(dir: &Path) {
    let Ok(pid) = fs::read_to_string(dir.join("tansu.pid")) else {
        return;
    };
    let pid = pid.trim();
    let proc = Path::new("/proc").join(pid);
    let ours = fs::read_link(proc.join("cwd")).is_ok_and(|cwd| cwd == dir)
        && fs::read(proc.join("cmdline"))
            .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("tansu"));
    if ours {
        eprintln!("killing tansu pid {pid} left over from an earlier run");
        let _ = Command::new("kill").args(["-KILL", pid]).status();
        wait_until(
            "the leftover broker exits",
            || !proc.exists(),
            Duration::from_secs(10),
        );
    }
}

fn wait_until(what: &str, done: impl Fn() -> bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Clients, errors, logs

fn sasl(mechanism: &str, password: &str) -> Config {
    [
        ("bootstrap.servers", ADDR),
        ("security.protocol", "sasl_plaintext"),
        ("sasl.mechanisms", mechanism),
        ("sasl.username", USER),
        ("sasl.password", password),
        // Unused without TLS, but a secret all the same.
        ("ssl.key.password", KEY_PASSWORD),
        // librdkafka logs the SASL exchange and connections.
        ("debug", "security,broker"),
    ]
    .into_iter()
    .collect()
}

async fn sasl_topic(prefix: &str) -> String {
    let topic = common::unique(prefix);
    xkafka::admin::ensure_topics(
        ADDR,
        &[(&topic, 1)],
        &sasl(MECHANISM, PASSWORD),
        Duration::from_secs(10),
    )
    .await
    .expect("create the topic, authenticated");
    topic
}

/// What an error handler received: Display and Debug, and librdkafka's code.
#[derive(Clone, Debug)]
struct Seen {
    display: String,
    debug: String,
    code: Option<RDKafkaErrorCode>,
}

type Errors = Arc<Mutex<Vec<Seen>>>;

fn record(errors: &Errors, err: &Error) {
    errors.lock().unwrap().push(Seen {
        display: err.to_string(),
        debug: format!("{err:?}"),
        code: err.kafka_code(),
    });
}

fn authentication_failed(errors: &Errors) -> Option<Seen> {
    errors
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.code == Some(RDKafkaErrorCode::Authentication))
        .cloned()
}

async fn wait_for(done: impl Fn() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn assert_hidden(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} shows secret {secret}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_round_trip() {
    logs();
    let _broker = sasl_broker();
    let topic = sasl_topic("sasl-round-trip").await;

    let errors: Errors = Arc::default();
    let sink = errors.clone();
    let producer = Producer::builder("xkafka-sasl")
        .configs(sasl(MECHANISM, PASSWORD).iter())
        .error_handler(move |err| record(&sink, err))
        .build()
        .expect("producer");
    let started = Instant::now();
    let message = Message::builder(topic.as_str())
        .key("k1")
        .value("over SCRAM")
        .build();
    let delivery = producer.publish(message).await.expect("publish");
    eprintln!(
        "authenticated publish (connect + SCRAM + produce) in {:?}",
        started.elapsed()
    );
    assert_eq!((delivery.partition, delivery.offset), (0, 0));
    producer.close().await;

    let seen: Arc<Mutex<Vec<Message>>> = Arc::default();
    let recorder = seen.clone();
    let sink = errors.clone();
    let consumer = Consumer::builder(common::unique("sasl-g"))
        .configs(sasl(MECHANISM, PASSWORD).iter())
        .topics([topic.as_str()])
        .config("auto.offset.reset", "earliest")
        .shutdown_timeout(Duration::from_secs(5))
        .error_handler(move |err| {
            record(&sink, err);
            Decision::Continue
        })
        .handler(move |m: Message| {
            recorder.lock().unwrap().push(m);
            async { Ack::Success }
        })
        .build()
        .expect("consumer");
    let probe = seen.clone();
    let started = Instant::now();
    consumer
        .run(common::until(
            move || !probe.lock().unwrap().is_empty(),
            Duration::from_secs(30),
        ))
        .await
        .expect("run");
    eprintln!("authenticated consume in {:?}", started.elapsed());

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "consumed {seen:?}");
    assert_eq!(seen[0].key_str(), Some("k1"));
    assert_eq!(seen[0].value_str(), Some("over SCRAM"));
    assert_eq!(
        authentication_failed(&errors).map(|e| e.display),
        None,
        "the right password was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_clearly_and_leaks_nothing() {
    let logs = logs();
    let _broker = sasl_broker();
    // An authenticated client first, so the logs hold a successful SCRAM
    // exchange with the right password as well.
    let topic = sasl_topic("sasl-wrong").await;
    #[cfg(feature = "metrics")]
    let metrics = xkafka::metrics::Metrics::new();

    let config = sasl(MECHANISM, WRONG);
    let mut shown = vec![("Config", format!("{config:?}"))];

    // The producer: its error handler hears of the failure at once; a
    // publish fails once `message.timeout.ms` passed.
    let produced: Errors = Arc::default();
    let sink = produced.clone();
    let builder = Producer::builder("xkafka-sasl-wrong")
        .configs(config.iter())
        .config("message.timeout.ms", "5000")
        .error_handler(move |err| record(&sink, err));
    #[cfg(feature = "metrics")]
    let builder = builder.layer(metrics.producer_layer());
    shown.push(("ProducerBuilder", format!("{builder:?}")));
    let started = Instant::now();
    let producer = builder.build().expect("producer");
    shown.push(("Producer", format!("{producer:?}")));
    let heard = wait_for(
        || authentication_failed(&produced).is_some(),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        heard,
        "the producer's error handler got no authentication error within 10 s: {:?}",
        produced.lock().unwrap()
    );
    eprintln!(
        "producer error handler: authentication error {:?} after build",
        started.elapsed()
    );
    let started = Instant::now();
    let message = Message::builder(topic.as_str()).value("never").build();
    let publish = producer.publish(message);
    let published = tokio::time::timeout(Duration::from_secs(20), publish)
        .await
        .expect("publish settles within 20 s");
    let publish_err = published.expect_err("a wrong password cannot publish");
    eprintln!(
        "publish failed after {:?}: {publish_err}",
        started.elapsed()
    );
    shown.push(("publish error", format!("{publish_err} / {publish_err:?}")));
    let auth = authentication_failed(&produced).expect("seen above");
    eprintln!("producer error handler: {}", auth.display);
    assert!(
        auth.display.contains("Authentication failure"),
        "{}",
        auth.display
    );
    producer.close().await;

    // The consumer: its error handler stops it; `run` returns the error.
    let consumed: Errors = Arc::default();
    let sink = consumed.clone();
    let builder = Consumer::builder(common::unique("sasl-wrong-g"))
        .configs(config.iter())
        .topics([topic.as_str()])
        .shutdown_timeout(Duration::from_secs(5))
        .error_handler(move |err| {
            record(&sink, err);
            if err.kafka_code() == Some(RDKafkaErrorCode::Authentication) {
                Decision::Stop
            } else {
                Decision::Continue
            }
        })
        .handler(|_m: Message| async { Ack::Success });
    #[cfg(feature = "metrics")]
    let builder = builder.metrics(&metrics).layer(metrics.layer());
    shown.push(("ConsumerBuilder", format!("{builder:?}")));
    let consumer = builder.build().expect("consumer");
    shown.push(("Consumer", format!("{consumer:?}")));
    let started = Instant::now();
    let run = consumer.run(std::future::pending::<()>());
    let stopped = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the consumer stops within 30 s");
    let run_err = stopped.expect_err("a wrong password cannot consume");
    eprintln!("consumer stopped after {:?}: {run_err}", started.elapsed());
    assert_eq!(
        run_err.kafka_code(),
        Some(RDKafkaErrorCode::Authentication),
        "{run_err:?}"
    );
    assert!(
        run_err.to_string().contains("Authentication failure"),
        "{run_err}"
    );
    shown.push(("run error", format!("{run_err} / {run_err:?}")));
    assert!(authentication_failed(&consumed).is_some());

    // Nothing shows a password.
    for errors in [&produced, &consumed] {
        for e in errors.lock().unwrap().iter() {
            shown.push(("handled error", format!("{} / {}", e.display, e.debug)));
        }
    }
    for (what, text) in &shown {
        assert_hidden(what, text);
    }
    let text = logs.text();
    assert_hidden("logs", &text);
    // …and the logs are not empty by accident: librdkafka's SASL debug
    // lines and its failure reason arrived.
    for expected in ["SCRAM", "client error", "Authentication failure"] {
        assert!(
            text.contains(expected),
            "no {expected:?} in the logs:\n{text}"
        );
    }
    #[cfg(feature = "metrics")]
    {
        let rendered = metrics.render();
        assert_hidden("metrics", &rendered);
        let failed =
            format!("xkafka_messages_published_total{{outcome=\"fail\",topic=\"{topic}\"}} 1");
        assert!(rendered.contains(&failed), "{rendered}");
    }
}

/// Tansu's SASL library has no PLAIN: the broker closes the connection on
/// the handshake and librdkafka reports an authentication failure ("SASL
/// PLAIN mechanism handshake failed … broker's supported mechanisms: (n/a)").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_is_refused_by_tansu() {
    logs();
    let _broker = sasl_broker();
    let errors: Errors = Arc::default();
    let sink = errors.clone();
    let producer = Producer::builder("xkafka-sasl-plain")
        .configs(sasl("PLAIN", PASSWORD).iter())
        .error_handler(move |err| record(&sink, err))
        .build()
        .expect("producer");
    let refused = wait_for(
        || authentication_failed(&errors).is_some(),
        Duration::from_secs(20),
    )
    .await;
    assert!(refused, "PLAIN not refused: {:?}", errors.lock().unwrap());
    producer.close().await;
}
