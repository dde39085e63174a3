//! `--metrics-addr`: the metrics over HTTP for Prometheus to scrape
//! (`GET /metrics`). A few lines of HTTP/1.1 on std's TcpListener, one
//! connection at a time on one thread: a scraper every few seconds is all
//! it serves, and a stuck client is dropped after a timeout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// clap's parser for `--metrics-addr`: `HOST:PORT`, `[V6]:PORT`, or `:PORT`
/// for every interface.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!(
            "bad address {s:?} (HOST:PORT, e.g. 0.0.0.0:9464, 127.0.0.1:9464, [::]:9464, or :9464)"
        )
    })
}

pub struct MetricsServer {
    pub addr: SocketAddr,
}

/// Binds `addr` now (so a busy port is an error before watching starts) and
/// serves `text` on a thread.
pub fn serve(addr: SocketAddr, text: Arc<Mutex<String>>) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("spinguard-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &text) {
                            log::debug!("metrics client: {e}");
                        }
                    }
                    Err(e) => log::debug!("metrics accept: {e}"),
                }
            }
        })?;
    Ok(MetricsServer { addr })
}

/// How much of a request is read: its first line and headers (a scraper's
/// are a few hundred bytes).
const REQUEST_LIMIT: u64 = 16 * 1024;
/// How long a request may take to arrive (each read also times out at 5 s).
const REQUEST_TIME: Duration = Duration::from_secs(5);

fn answer(conn: TcpStream, text: &Mutex<String>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    // One thread serves every scrape: a client that sends without end, or
    // a byte at a time, must not hold it (or our memory) for long. A request
    // is read for at most REQUEST_LIMIT bytes and REQUEST_TIME.
    let start = Instant::now();
    let mut reader = BufReader::new(conn.try_clone()?.take(REQUEST_LIMIT));
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Read (and ignore) the headers up to the blank line.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0
            || h == "\r\n"
            || h == "\n"
            || start.elapsed() > REQUEST_TIME
        {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            text.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        ),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "spinguard watch: metrics at /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr(":9464").unwrap().to_string(), "0.0.0.0:9464");
        assert_eq!(parse_addr("127.0.0.1:1").unwrap().port(), 1);
        assert!(parse_addr("[::]:9464").unwrap().is_ipv6());
        for bad in ["", "9464", "localhost", "1.2.3.4", ":x", "1.2.3.4:99999"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serves_metrics_and_nothing_else() {
        let text = Arc::new(Mutex::new("m 1\n".to_string()));
        let s = serve("127.0.0.1:0".parse().unwrap(), text.clone()).unwrap();
        let get = |req: &str| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(&mut c, &mut out).unwrap();
            out
        };
        let r = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nm 1\n"), "{r}");
        *text.lock().unwrap() = "m 2\n".into();
        assert!(get("GET /metrics?x=1 HTTP/1.0\r\n\r\n").ends_with("m 2\n"));
        assert!(get("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A busy port is an error at bind time.
        assert!(serve(s.addr, text).is_err());
    }
}
