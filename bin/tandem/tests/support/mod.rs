//! What the tests of the `tandem` binary share: `tandem up` or `tandem
//! serve <service>` as a child process on a free port, and authenticated
//! requests.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The binary under test.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// A `tandem up` or `tandem serve` child process, killed (SIGKILL) if still
/// running when dropped.
pub struct Running {
    pub child: Child,
    /// Where it listens, as it printed on its first line.
    pub addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tandem up` on a free loopback port with `data_dir`, logging at
/// warn (embedded unless `env` names a database), and the extra `env`.
pub fn start_up<K: AsRef<OsStr>, V: AsRef<OsStr>>(data_dir: &Path, env: &[(K, V)]) -> Running {
    start(&["up"], data_dir, env)
}

/// Starts `tandem serve <service>` as [`start_up`] starts `tandem up`.
pub fn start_serve<K: AsRef<OsStr>, V: AsRef<OsStr>>(service: &str, data_dir: &Path, env: &[(K, V)]) -> Running {
    start(&["serve", service], data_dir, env)
}

fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(command_args: &[&str], data_dir: &Path, env: &[(K, V)]) -> Running {
    let mut command = Command::new(TANDEM);
    command
        .args(command_args)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("TANDEM_DATABASE_URL")
        .env("TANDEM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap_or_else(|error| panic!("start tandem {command_args:?}: {error}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a first line").expect("readable stdout");
    // "tandem listening on 127.0.0.1:PORT (...)" or
    // "tandem serve triage listening on 127.0.0.1:PORT (...)"
    let addr = first
        .split_once(" listening on ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Running { child, addr }
}

/// A request carrying a bearer token.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    request
}
