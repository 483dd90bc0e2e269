//! The Modbus peer of the suites: `tests/peers/modbus_server.py` (pymodbus, from the virtualenv
//! `scripts/install-deps.sh` makes in the project's cache) serving the values a test gives it,
//! over TCP on loopback or Modbus RTU on one end of a `socat` pty pair.
//!
//! A missing virtualenv or `socat` fails the test with the command that installs them: never a
//! silent skip.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pymodbus version `scripts/install-deps.sh` installs (its virtualenv's directory name).
pub const PYMODBUS_VERSION: &str = "3.16.1";

/// The virtualenv's Python, `$EDGE_CACHE/pymodbus-<version>/bin/python`.
pub fn python() -> PathBuf {
    crate::venv::python(&format!("pymodbus-{PYMODBUS_VERSION}"), "pymodbus")
}

/// The peer script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/modbus_server.py")
}

/// A running `modbus_server.py`, killed when dropped.
pub struct Peer {
    pub child: Child,
    /// Its stderr.
    pub log: PathBuf,
}

impl Peer {
    /// Serves `values` (the script's JSON, see its doc) with `args` (`--tcp 127.0.0.1:N` or
    /// `--serial PATH ...`); returns once it says READY. Files go to `dir`.
    pub fn start(dir: &Path, values: &str, args: &[&str]) -> Peer {
        let values_path = dir.join("modbus-values.json");
        std::fs::write(&values_path, values).expect("write the served values");
        let log = dir.join("modbus-peer.stderr");
        let mut child = Command::new(python())
            .arg(script())
            .arg("--values")
            .arg(&values_path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("peer stderr file"),
            ))
            .spawn()
            .expect("spawn the pymodbus peer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the peer's READY");
        let peer = Peer { child, log };
        assert_eq!(
            line.trim(),
            "READY",
            "the pymodbus peer did not start:\n{}",
            peer.stderr()
        );
        peer
    }

    /// Serves `values` over Modbus TCP on `addr`.
    pub fn tcp(dir: &Path, values: &str, addr: SocketAddr, extra: &[&str]) -> Peer {
        let addr = addr.to_string();
        let mut args = vec!["--tcp", addr.as_str()];
        args.extend_from_slice(extra);
        Peer::start(dir, values, &args)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two connected ptys made by `socat` (`a` and `b` are symlinks to `/dev/pts/N`), killed when
/// dropped.
pub struct PtyPair {
    child: Child,
    pub a: PathBuf,
    pub b: PathBuf,
}

impl PtyPair {
    pub fn new(dir: &Path) -> PtyPair {
        let (a, b) = (dir.join("tty-a"), dir.join("tty-b"));
        let end = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new("socat")
            .args([end(&a), end(&b)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("socat could not be run: {e} (run `bash scripts/install-deps.sh`)")
            });
        let pair = PtyPair { child, a, b };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(pair.a.exists() && pair.b.exists()) {
            assert!(Instant::now() < deadline, "socat made no pty pair");
            std::thread::sleep(Duration::from_millis(20));
        }
        pair
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
