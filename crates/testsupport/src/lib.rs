//! Real `redis-server` (and `haproxy`) processes for tests: on free loopback ports, in a temporary
//! directory, stopped (SIGKILL) when dropped. Tests never use a shared or system server.
#![warn(missing_docs)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// A `redis-server` process (standalone, or one node of a cluster).
pub struct RedisServer {
    /// Its loopback port.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cluster: bool,
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RedisServer {
    /// Starts a server on a free port (`cluster`: with cluster mode on) and waits until it answers.
    pub fn start(cluster: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedisServer {
            port: free_port(),
            child: None,
            dir,
            cluster,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--dir",
            self.dir.path().to_str().unwrap(),
            "--loglevel",
            "warning",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server is installed (scripts/test.sh installs it)"),
        );
        let port = self.port;
        wait_for("redis-server to answer PING", || {
            cli(port, &["ping"]).is_some_and(|o| o.contains("PONG"))
        });
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Its working directory (for files the test wants to look at).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three masters, no replicas, all 16384 slots assigned.
pub struct RedisCluster {
    /// The masters, each a process of its own.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three masters and joins them into a cluster that covers every slot.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(true)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new("redis-cli").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            let port = n.port;
            wait_for("cluster_state:ok", || {
                cli(port, &["cluster", "info"]).is_some_and(|o| o.contains("cluster_state:ok"))
            });
        }
        RedisCluster { nodes }
    }

    /// The URLs of the masters.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A real `haproxy` process in the foreground, killed on drop.
pub struct HaProxy {
    child: Child,
}

impl HaProxy {
    /// Starts `haproxy -f config` with `env` set (the config reads addresses from the
    /// environment) and waits until every address in `listens` accepts connections.
    pub fn start(config: &Path, env: &[(&str, String)], listens: &[String]) -> HaProxy {
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy is installed (scripts/test.sh installs it)");
        for addr in listens {
            wait_for("haproxy to listen", || {
                std::net::TcpStream::connect(addr.as_str()).is_ok()
            });
        }
        HaProxy { child }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL an `ors serve` child process prints when it listens (`ors listening on URL`;
/// start it with a piped stdout). Its stdout keeps being drained afterwards, so the
/// process never blocks on a full pipe. Panics if no address comes within 30 s.
pub fn ors_listening_url(child: &mut Child) -> String {
    use std::io::{BufRead, BufReader};
    let stdout = child
        .stdout
        .take()
        .expect("ors serve started with a piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("ors listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("ors serve prints the address it listens on")
}

/// The value after `--name` on a bench binary's command line.
pub fn flag_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The `p` quantile (0..=1) of sorted figures; NaN if there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One `ors serve` process of a benchmark's node: instance `instance` on the Redis at
/// `redis_url`, with its documents and `ors.toml` in `dir` and its data in
/// `dir/<instance>`. Killed on drop.
pub struct OrsInstance {
    bin: String,
    args: Vec<String>,
    log: String,
    child: Option<Child>,
    /// Where it listens (`http://127.0.0.1:<port>`), from its last start.
    pub url: String,
}

impl OrsInstance {
    /// Starts the process; `log` is its `ORS_LOG` filter.
    pub fn start(bin: &str, redis_url: &str, dir: &Path, instance: &str, log: &str) -> Self {
        let path = |p: &Path| p.display().to_string();
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--store",
            "redis",
            "--redis-url",
            redis_url,
            "--instance",
            instance,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--documents-dir".into(),
            path(dir),
            "--data-dir".into(),
            path(&dir.join(instance)),
            "--config".into(),
            path(&dir.join("ors.toml")),
        ])
        .collect();
        let mut p = OrsInstance {
            bin: bin.into(),
            args,
            log: log.into(),
            child: None,
            url: String::new(),
        };
        p.respawn();
        p
    }

    /// Starts the process (again, after [`OrsInstance::kill9`]).
    pub fn respawn(&mut self) {
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .args(&self.args)
            .env("ORS_LOG", &self.log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the ors binary runs");
        self.url = ors_listening_url(&mut child);
        self.child = Some(child);
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for OrsInstance {
    fn drop(&mut self) {
        self.kill9();
    }
}
