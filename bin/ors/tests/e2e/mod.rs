//! Runs the real `ors` binary on a free loopback port and talks HTTP to it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    pub docs: PathBuf,
    extra: Vec<String>,
    config: PathBuf,
    /// `ulimit -v` for the process, in KiB: a script's runaway allocation then fails
    /// (and aborts the process) long before it could hurt the machine.
    memory_limit_kib: Option<u64>,
    /// Environment variables for the next spawns (e.g. `ORS_FAILPOINT`).
    pub envs: Vec<(String, String)>,
}

pub fn docs_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

impl Server {
    /// Starts `ors serve` with `config` (TOML) written next to the data directory.
    pub fn start(data: &Path, docs: &Path, config: &str, extra: &[&str]) -> Server {
        Server::start_with_env(data, docs, config, extra, &[])
    }

    /// The same, with environment variables for the process.
    pub fn start_with_env(
        data: &Path,
        docs: &Path,
        config: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        let cfg = data.join("ors-test.toml");
        std::fs::create_dir_all(data).unwrap();
        std::fs::write(&cfg, config).unwrap();
        let mut s = Server {
            child: None,
            url: String::new(),
            data: data.to_path_buf(),
            docs: docs.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            config: cfg,
            memory_limit_kib: None,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn();
        s
    }

    /// The same, with the process's address space limited to `kib` KiB.
    pub fn start_limited(
        data: &Path,
        docs: &Path,
        config: &str,
        extra: &[&str],
        kib: u64,
    ) -> Server {
        let mut s = Server::start(data, docs, config, extra);
        s.kill9();
        s.memory_limit_kib = Some(kib);
        s.spawn();
        s.until_primary();
        s
    }

    /// Waits (up to 10 s) until `/heartbeat` answers 200: a process started right after
    /// another of its node was killed takes the node's lease over first.
    pub fn until_primary(&self) {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = std::net::TcpStream::connect(&addr).and_then(|mut c| {
                c.write_all(b"GET /heartbeat HTTP/1.0\r\nHost: test\r\n\r\n")?;
                let mut head = [0u8; 12];
                c.read_exact(&mut head)?;
                Ok(head)
            });
            if status.is_ok_and(|h| h.ends_with(b" 200")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became primary",
                self.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn command(&self) -> Command {
        match self.memory_limit_kib {
            None => Command::new(env!("CARGO_BIN_EXE_ors")),
            Some(kib) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -v {kib} && exec \"$0\" \"$@\"")])
                    .arg(env!("CARGO_BIN_EXE_ors"));
                c
            }
        }
    }

    /// Whether the process has exited on its own (crashed), and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Starts the process again after it exited.
    pub fn respawn(&mut self) {
        self.child = None;
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut child = self
            .command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--documents-dir")
            .arg(&self.docs)
            .arg("--config")
            .arg(&self.config)
            .args(&self.extra)
            .env("ORS_LOG", "warn")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.url = ors_testsupport::ors_listening_url(&mut child);
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the server process.
    pub fn signal(&self, name: &str) {
        let c = self.child.as_ref().expect("running");
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &c.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let mut c = self.child.take().unwrap();
        c.wait().unwrap()
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Two nodes, `node1` and `node2`: see [`redis_nodes`].
pub fn redis_pair(
    dir: &Path,
    redis_url: &str,
    tokens: &[&str],
    config: &str,
    docs: &[(&str, &str)],
) -> (Server, Server) {
    let mut v = redis_nodes(dir, redis_url, tokens, config, docs, 2);
    let two = v.pop().unwrap();
    (v.pop().unwrap(), two)
}

/// `n` nodes, `node1` to `node<n>`, each one process on the same redis-server, requiring
/// the bearer tokens in `tokens` (the first is the peers'), with `config`, serving the
/// documents `docs` (name, text). All are primary when this returns.
pub fn redis_nodes(
    dir: &Path,
    redis_url: &str,
    tokens: &[&str],
    config: &str,
    docs: &[(&str, &str)],
    n: usize,
) -> Vec<Server> {
    let docs_dir = dir.join("docs");
    std::fs::create_dir_all(&docs_dir).unwrap();
    for (name, text) in docs {
        std::fs::write(docs_dir.join(name), text).unwrap();
    }
    let tokens_file = dir.join("tokens");
    std::fs::write(&tokens_file, tokens.join("\n")).unwrap();
    let servers: Vec<Server> = (1..=n)
        .map(|i| {
            Server::start(
                &dir.join(i.to_string()),
                &docs_dir,
                config,
                &[
                    "--store",
                    "redis",
                    "--redis-url",
                    redis_url,
                    "--node-id",
                    &format!("node{i}"),
                    "--api-tokens-file",
                    tokens_file.to_str().unwrap(),
                ],
            )
        })
        .collect();
    for s in &servers {
        s.until_primary();
    }
    servers
}

/// A client that follows no redirect itself (to see the `307`s, or so that a token goes
/// along to the next node), giving up on a request after `timeout`.
pub fn no_redirects(timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .unwrap()
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `GET url` with a bearer token; the JSON answer.
pub async fn get_with_token(c: &reqwest::Client, url: &str, token: &str) -> Value {
    c.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Starts a session of `src` at the server `url` with a bearer token; its id.
pub async fn start_with_token(c: &reqwest::Client, url: &str, token: &str, src: &str) -> String {
    let r: Value = c
        .post(format!("{url}/scxml/session/start"))
        .bearer_auth(token)
        .form(&[("src", src)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["sessionid"]
        .as_str()
        .unwrap_or_else(|| panic!("no session started: {r}"))
        .to_string()
}

pub async fn post(c: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = c.post(url).form(form).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

pub async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

pub async fn start(c: &reqwest::Client, s: &Server, src: &str, extra: &[(&str, &str)]) -> String {
    let mut form = vec![("src", src)];
    form.extend_from_slice(extra);
    let (status, body) = post(c, &format!("{}/scxml/session/start", s.url), &form).await;
    assert_eq!(status, 200, "{body}");
    body["sessionid"].as_str().unwrap().to_string()
}

pub async fn query(c: &reqwest::Client, s: &Server, sid: &str) -> (u16, Value) {
    get(c, &format!("{}/scxml/session/{sid}/query", s.url)).await
}

/// Polls until `ok` holds for the session's query, or panics after `secs`.
pub async fn wait_for(
    c: &reqwest::Client,
    s: &Server,
    sid: &str,
    secs: u64,
    ok: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (st, v) = query(c, s, sid).await;
        if ok(st, &v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached; last query: {st} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
