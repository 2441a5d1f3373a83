//! A backup's watch on its primary's process: a request the primary holds open, so that
//! the moment its process dies the connection breaks. A broken watch followed by a
//! refused connection is evidence that the process is gone (the kernel closes the
//! sockets of a killed process and nothing listens on its port any more). A paused or
//! unreachable primary gives no such evidence: then the lease expiry decides.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The path a primary serves the watch on (it answers after a while; a backup answers at
/// once).
pub const WATCH_PATH: &str = "/cluster/watch";

/// How a watch request ended.
enum Outcome {
    /// A complete answer: the process is alive.
    Answered,
    /// The connection broke, or could not be made: check whether the process is gone.
    Broken,
    /// No answer in time (a paused process, a slow network): no evidence either way.
    Silent,
}

/// `host:port` of an `http://` URL.
fn host_port(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let hp = rest.split('/').next()?;
    Some(if hp.contains(':') {
        hp.to_string()
    } else {
        format!("{hp}:80")
    })
}

async fn watch_once(addr: &str) -> Outcome {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
    else {
        return Outcome::Broken;
    };
    let req = format!("GET {WATCH_PATH} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return Outcome::Broken;
    }
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await {
        Ok(Ok(_)) if answer.starts_with(b"HTTP/1.1 ") => Outcome::Answered,
        Ok(_) => Outcome::Broken,
        Err(_) => Outcome::Silent,
    }
}

/// Nothing listens at `addr` any more.
async fn gone(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Watches the primary at `url` until its process is gone, then reports `url` once.
pub(crate) async fn watch(url: String, dead: mpsc::UnboundedSender<String>) {
    let Some(addr) = host_port(&url) else {
        return;
    };
    loop {
        match watch_once(&addr).await {
            Outcome::Answered => {}
            Outcome::Silent => {}
            Outcome::Broken => {
                if gone(&addr).await {
                    let _ = dead.send(url);
                    return;
                }
                // A dying process may still hold its port for a moment: look again soon.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:9011").as_deref(),
            Some("127.0.0.1:9011")
        );
        assert_eq!(
            host_port("http://a.example/x").as_deref(),
            Some("a.example:80")
        );
        assert_eq!(host_port("https://a.example"), None);
    }

    #[tokio::test]
    async fn a_killed_server_is_reported_and_a_live_one_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // A "primary" that holds each watch 200 ms and answers, three times, then dies
        // in the middle of a watch (its listener and connection dropped).
        let server = tokio::spawn(async move {
            for i in 0..4 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                if i < 3 {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = std::time::Instant::now();
        tokio::spawn(watch(url.clone(), tx));
        let reported = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("reported")
            .unwrap();
        assert_eq!(reported, url);
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "not while it answered"
        );
        server.await.unwrap();
    }
}
