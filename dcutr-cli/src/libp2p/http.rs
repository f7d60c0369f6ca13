//! `--metrics ADDR`: a minimal HTTP/1.1 responder that serves the
//! prometheus-client registry as text at `GET /metrics` (and nothing else),
//! one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head we read: a scraper's GET is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How long a client may take to send its request head and read the
/// answer; a stalled client is dropped after it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of the OpenMetrics text format prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics endpoint, running in the background.
#[derive(Debug, Clone)]
pub struct MetricsServer {
    addr: SocketAddr,
    scrapes: Arc<AtomicU64>,
}

impl MetricsServer {
    /// Listens on `addr` and serves `registry` until the runtime stops.
    ///
    /// # Errors
    /// When `addr` cannot be bound.
    pub async fn start(addr: SocketAddr, registry: Arc<Registry>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("--metrics {addr}: cannot listen there (port in use? pick another, or port 0)")
        })?;
        let addr = listener.local_addr()?;
        let scrapes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&scrapes);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let registry = Arc::clone(&registry);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let answered = answer(stream, &registry, &counter);
                    // A failed or stalled client only loses its own answer.
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answered).await;
                });
            }
        });
        Ok(MetricsServer { addr, scrapes })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `/metrics` requests answered so far.
    #[must_use]
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }
}

/// Reads one request head and answers it, counting scrapes in `scrapes`
/// (before the answer leaves, so a client that has it sees the count).
async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    scrapes: &AtomicU64,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_BYTES {
            let status = "431 Request Header Fields Too Large";
            return respond(&mut stream, status, "text/plain", "").await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let mut body = String::new();
            if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
                let status = "500 Internal Server Error";
                return respond(&mut stream, status, "text/plain", "").await;
            }
            scrapes.fetch_add(1, Ordering::Relaxed);
            respond(&mut stream, "200 OK", CONTENT_TYPE, &body).await
        }
        ("GET", _) => {
            let body = "not found: the metrics are at /metrics\n";
            respond(&mut stream, "404 Not Found", "text/plain", body).await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Fetches `http://{addr}/metrics` (tests and self-checks): the body of a
/// 200 answer.
///
/// # Errors
/// When the connection fails or the status is not 200.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_SCRAPE_BYTES)
            .read_to_end(&mut answer)
            .await?;
        anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, fetch)
        .await
        .with_context(|| format!("scraping {addr}: no answer within {REQUEST_TIMEOUT:?}"))??;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("scraping {addr}: no HTTP answer"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "scraping {addr}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

/// Largest answer [`scrape`] reads: far above this registry's few families.
const MAX_SCRAPE_BYTES: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn serves_the_registry_at_metrics_and_counts_scrapes() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("test_things", "Things counted", counter.clone());
        counter.inc_by(3);
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
            .await
            .unwrap();
        let body = scrape(server.addr()).await.unwrap();
        assert!(body.contains("test_things_total 3"), "{body}");
        assert_eq!(server.scrapes(), 1);
        let mut other = TcpStream::connect(server.addr()).await.unwrap();
        other.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        other.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert_eq!(server.scrapes(), 1);
    }
}
