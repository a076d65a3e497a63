//! A private Tansu broker process: the broker-fault tests kill it and start
//! it again on the same data, without disturbing the suite's own broker.
//!
//! The binary is the one `scripts/broker.sh install` builds
//! (`$XKAFKA_BROKER_PREFIX/bin/tansu`, default `/opt/xkafka-broker`).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xkafka::BoxError;

/// A Tansu broker on 127.0.0.1:`port`, sqlite storage in `dir`.
pub struct Tansu {
    exe: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Tansu {
    /// The installed tansu binary.
    pub fn exe() -> Result<PathBuf, BoxError> {
        let prefix =
            std::env::var("XKAFKA_BROKER_PREFIX").unwrap_or_else(|_| "/opt/xkafka-broker".into());
        let exe = PathBuf::from(prefix).join("bin/tansu");
        if exe.is_file() {
            Ok(exe)
        } else {
            Err(format!(
                "no tansu at {}: run scripts/broker.sh install (or set XKAFKA_BROKER_PREFIX)",
                exe.display()
            )
            .into())
        }
    }

    /// Starts a broker with fresh data in `dir` and waits until it accepts
    /// connections.
    pub fn start(port: u16, dir: PathBuf) -> Result<Self, BoxError> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut broker = Tansu {
            exe: Self::exe()?,
            port,
            dir,
            child: None,
        };
        if broker.accepts() {
            return Err(format!("127.0.0.1:{port} is already in use").into());
        }
        broker.resume()?;
        Ok(broker)
    }

    /// `bootstrap.servers` for it.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn accepts(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    }

    /// Kills the broker (SIGKILL: no clean shutdown) and waits until its port
    /// is closed.
    pub fn kill(&mut self) -> Result<(), BoxError> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the broker again on the same data and waits until it accepts
    /// connections.
    pub fn resume(&mut self) -> Result<(), BoxError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.exe)
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.accepts() {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(format!("tansu exited during start: {status}").into());
                }
            }
            if Instant::now() > deadline {
                return Err("tansu did not accept connections within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
