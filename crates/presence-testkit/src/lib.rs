//! Test support for the presence broker.
//!
//! [`NatsServer`] starts a real `nats-server` (with JetStream) on a random
//! loopback port, waits until it has written its ports file, and kills it
//! on drop. [`NatsCluster`] starts three of them routed into one
//! JetStream cluster, for replicated streams and buckets (R3). The binary is taken from `NATS_SERVER_BIN` or `PATH`
//! (Debian's `nats-server` package; the README's test command installs
//! it). [`Rng`] is the seeded generator of the property tests.

pub mod pki;
pub mod rng;

pub use rng::Rng;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server, killed on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    port: u16,
    dir: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}

impl NatsServer {
    /// Starts a server on a random port. Panics with a clear message when
    /// nats-server is missing (tests cannot run without it).
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts a server on `port` (0 for a random one), e.g. to restart it
    /// on the port it had.
    pub fn start_on(port: u16) -> Self {
        Self::start_inner(port, None)
    }

    /// Starts a server with the configuration file text `conf` (e.g. a
    /// shipped deployment config): the port is random and the file's
    /// JetStream `store_dir` is replaced by a temporary one.
    pub fn start_with_config(conf: &str) -> Self {
        Self::start_inner(0, Some(conf))
    }

    fn start_inner(port: u16, conf: Option<&str>) -> Self {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        if let Some(c) = conf {
            let js = dir.path().join("js");
            let text: Vec<String> = c
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("store_dir") {
                        format!("  store_dir: {:?}", js.display().to_string())
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            if let Err(e) = std::fs::write(dir.path().join("nats.conf"), text.join("\n")) {
                panic!("write nats.conf: {e}");
            }
        }
        let (child, url) = spawn(dir.path(), port);
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad nats url {url}"));
        Self {
            child,
            url,
            port,
            dir,
        }
    }

    /// Returns the client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns the port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (like a crash) and starts it again on the same
    /// port and storage directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, url) = spawn(self.dir.path(), self.port);
        self.child = child;
        self.url = url;
    }
}

// The child is returned to the caller, whose Drop kills and waits for it.
#[allow(clippy::zombie_processes)]
fn spawn(dir: &Path, port: u16) -> (Child, String) {
    let ports_dir: PathBuf = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    if let Err(e) = std::fs::create_dir_all(&ports_dir) {
        panic!("create {}: {e}", ports_dir.display());
    }
    let port_arg = if port == 0 {
        "-1".to_string()
    } else {
        port.to_string()
    };
    let mut cmd = Command::new(binary());
    let conf = dir.join("nats.conf");
    if conf.exists() {
        cmd.arg("-c").arg(&conf);
    } else {
        cmd.arg("-js").arg("-sd").arg(dir.join("js"));
    }
    let mut child = cmd
        .args(["-a", "127.0.0.1", "-p", &port_arg])
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); install it with `apt-get install nats-server` or set NATS_SERVER_BIN",
                binary()
            )
        });
    let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The ports file is written once the listener is up.
        if let Ok(text) = std::fs::read_to_string(&ports_file)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = v["nats"][0].as_str()
            && std::net::TcpStream::connect(url.split_once("://").map_or(url, |(_, a)| a)).is_ok()
        {
            return (child, url.to_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not start within 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three nats-servers on loopback forming one JetStream cluster; each is
/// killed on drop.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
    /// `user:password` clients connect with (shipped configs).
    credentials: Option<String>,
}

struct ClusterNode {
    child: Option<Child>,
    client_port: u16,
}

fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("no free port: {e}"),
    }
}

impl NatsCluster {
    /// Starts three routed servers with JetStream and waits until the
    /// cluster's JetStream answers on every server (a meta leader is
    /// elected).
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Starts the three shipped cluster configs `confs`
    /// (deploy/nats/cluster-N.conf) on loopback: their client and route
    /// ports (4222, 6222) become free ports, the route hosts `nats-N`
    /// become 127.0.0.1, `store_dir` a temporary directory, the
    /// monitoring port is dropped; clients connect as `credentials`
    /// (`user:password`).
    pub fn start_with_configs(confs: [&str; 3], credentials: &str) -> Self {
        Self::start_inner(Some((confs, credentials)))
    }

    fn start_inner(shipped: Option<([&str; 3], &str)>) -> Self {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list: Vec<String> = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        for i in 0..3 {
            let store = dir.path().join(format!("js{i}")).display().to_string();
            let conf = match shipped {
                None => format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n\
                     cluster {{\n  name: presence-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    clients[i],
                    store,
                    routes[i],
                    route_list.join(", ")
                ),
                Some((confs, _)) => {
                    let mut text = confs[i]
                        .replace("0.0.0.0:4222", &format!("127.0.0.1:{}", clients[i]))
                        .replace("0.0.0.0:6222", &format!("127.0.0.1:{}", routes[i]));
                    for (n, port) in routes.iter().enumerate() {
                        text = text.replace(
                            &format!("@nats-{}:6222", n + 1),
                            &format!("@127.0.0.1:{port}"),
                        );
                    }
                    let lines: Vec<String> = text
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("http:"))
                        .map(|l| {
                            if l.trim_start().starts_with("server_name") {
                                // Names n<i>, as index_of expects.
                                format!("server_name: n{i}")
                            } else if l.trim_start().starts_with("store_dir") {
                                format!("  store_dir: {store:?}")
                            } else {
                                l.to_owned()
                            }
                        })
                        .collect();
                    lines.join("\n")
                }
            };
            if let Err(e) = std::fs::write(dir.path().join(format!("n{i}.conf")), conf) {
                panic!("write n{i}.conf: {e}");
            }
        }
        let mut c = Self {
            nodes: clients
                .into_iter()
                .map(|client_port| ClusterNode {
                    child: None,
                    client_port,
                })
                .collect(),
            dir,
            credentials: shipped.map(|(_, c)| c.to_owned()),
        };
        for i in 0..3 {
            c.spawn_node(i);
        }
        for i in 0..3 {
            c.wait_jetstream(i);
        }
        c
    }

    fn spawn_node(&mut self, i: usize) {
        let conf = self.dir.path().join(format!("n{i}.conf"));
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e})", binary()));
        self.nodes[i].child = Some(child);
    }

    /// Waits until server `i` answers JetStream API requests.
    fn wait_jetstream(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !js_answers(self.nodes[i].client_port, self.credentials.as_deref()) {
            assert!(
                Instant::now() < deadline,
                "JetStream of cluster node {i} did not come up within 60s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Returns server `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        match &self.credentials {
            Some(c) => format!("nats://{c}@127.0.0.1:{}", self.nodes[i].client_port),
            None => format!("nats://127.0.0.1:{}", self.nodes[i].client_port),
        }
    }

    /// Returns every server's URL, comma separated (a seed list).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Returns the index of the server named `name` (its `server_name`
    /// is `n<i>`), e.g. a stream's leader.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .filter(|i| *i < self.nodes.len())
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again (same ports and storage) and waits for its
    /// JetStream.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn_node(i);
        self.wait_jetstream(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Asks `$JS.API.INFO` over a raw NATS connection: whether JetStream
/// answers with account information (not an error, not silence).
fn js_answers(port: u16, credentials: Option<&str>) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return false;
    }
    let Ok(mut w) = s.try_clone() else {
        return false;
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.starts_with("INFO") {
        return false;
    }
    let auth = match credentials.and_then(|c| c.split_once(':')) {
        Some((u, p)) => format!(",\"user\":{u:?},\"pass\":{p:?}"),
        None => String::new(),
    };
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true,\"no_responders\":true{auth}}}\r\n\
         SUB _INBOX.testkit 1\r\nPUB $JS.API.INFO _INBOX.testkit 0\r\n\r\n"
    );
    if w.write_all(hello.as_bytes()).is_err() {
        return false;
    }
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line.starts_with("PING") {
            let _ = w.write_all(b"PONG\r\n");
            continue;
        }
        // MSG <subject> <sid> <bytes>; HMSG is the no-responders status.
        if line.starts_with("HMSG") || line.starts_with("-ERR") {
            return false;
        }
        if let Some(rest) = line.strip_prefix("MSG ") {
            let Some(n) = rest
                .split_whitespace()
                .last()
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return false;
            };
            let mut body = vec![0u8; n + 2];
            if std::io::Read::read_exact(&mut r, &mut body).is_err() {
                return false;
            }
            let text = String::from_utf8_lossy(&body);
            return !text.contains("\"error\"");
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing
/// test never leaves servers behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Sends `signal` (a name `kill` knows, e.g. `HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill -{signal} {pid} failed"
        );
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit;
    /// returns its exit status, or `None` if it is still running then
    /// (the guard kills it on drop).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a server with `--ready-file ready` (stdout and stderr
/// discarded) and waits until it has written its listening address there,
/// its readiness signal. Returns the guard and `http://<address>`. Panics
/// naming `what` if the process exits first or is not ready in 30 s.
pub fn spawn_ready(cmd: Command, ready: &Path, what: &str) -> (ChildGuard, String) {
    spawn_ready_logged(cmd, ready, what, None)
}

/// Like [`spawn_ready`], writing the server's stderr (its log) to `log`
/// when given.
pub fn spawn_ready_logged(
    mut cmd: Command,
    ready: &Path,
    what: &str,
    log: Option<&Path>,
) -> (ChildGuard, String) {
    let _ = std::fs::remove_file(ready);
    let stderr = match log {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Stdio::from(f),
            Err(e) => panic!("cannot create {}: {e}", p.display()),
        },
        None => Stdio::null(),
    };
    let child = match cmd
        .arg("--ready-file")
        .arg(ready)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot start {what}: {e}"),
    };
    let mut child = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = std::fs::read_to_string(ready)
            && !addr.is_empty()
        {
            return (child, format!("http://{addr}"));
        }
        let tail = || {
            log.and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                })
                .unwrap_or_default()
        };
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!(
                "{what} exited ({st}) before it was ready; its log ends:\n{}",
                tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready; its log ends:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
