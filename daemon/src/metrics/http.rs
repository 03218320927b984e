//! The metrics endpoint's HTTP/1.1 server: std only, one request per
//! connection, every resource bounded, because it faces the network.
//!
//! | bound | value | when exceeded |
//! |---|---|---|
//! | request head (request line and headers) | [`Limits::head_bytes_max`] | `431`, closed |
//! | time to read the head, and to write the reply | [`Limits::timeout`] | closed |
//! | connections at once | [`Limits::connections_max`] | closed at once, unanswered |
//!
//! `GET /metrics` (a query string is ignored) answers 200 with the
//! exposition; other paths 404; other methods 405; anything not HTTP/1.x
//! 400 or 505. A request body is never read (GET has none; the connection
//! closes after the reply).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The server's bounds (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head.
    pub head_bytes_max: usize,
    /// Reading the head; writing the reply.
    pub timeout: Duration,
    /// Connections served at once.
    pub connections_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes_max: 8 * 1024,
            timeout: Duration::from_secs(5),
            // A Prometheus server or two, and someone with curl.
            connections_max: 4,
        }
    }
}

/// What a request head gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// 400: not a request line.
    BadRequest,
    /// 404: another path.
    NotFound,
    /// 405: another method.
    MethodNotAllowed,
    /// 431: the head is larger than the limit.
    HeadTooLarge,
    /// 505: not HTTP/1.x.
    VersionNotSupported,
}

impl Route {
    fn status(self) -> &'static str {
        match self {
            Route::Metrics => "200 OK",
            Route::BadRequest => "400 Bad Request",
            Route::NotFound => "404 Not Found",
            Route::MethodNotAllowed => "405 Method Not Allowed",
            Route::HeadTooLarge => "431 Request Header Fields Too Large",
            Route::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }
}

/// Where the head ends (the index after its blank line), if it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// Routes a complete request head by its request line.
pub fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return Route::BadRequest;
    }
    if !version.starts_with("HTTP/") {
        return Route::BadRequest;
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Route::VersionNotSupported;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// Reads a request head within the limits: the route, or `None` if the
/// peer closed, stalled or failed first.
fn read_head(stream: &mut TcpStream, limits: &Limits) -> Option<Route> {
    let deadline = Instant::now() + limits.timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        // The timeout bounds the whole head, not each read: a peer sending
        // a byte a second gets no longer than one that sends nothing.
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let room = limits.head_bytes_max.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Some(Route::HeadTooLarge);
        }
        let n = stream.read(&mut chunk[..room]).ok()?;
        if n == 0 {
            return None;
        }
        // The blank line may straddle two reads: look back three bytes.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            return Some(route(&buf[..from + end]));
        }
    }
}

fn answer(stream: &mut TcpStream, route: Route, render: &dyn Fn() -> String, limits: &Limits) {
    let body = match route {
        Route::Metrics => render(),
        other => format!("{}\n", other.status()),
    };
    let content_type = match route {
        Route::Metrics => CONTENT_TYPE,
        _ => "text/plain; charset=utf-8",
    };
    let allow = if route == Route::MethodNotAllowed {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        route.status(),
        body.len()
    );
    if stream.set_write_timeout(Some(limits.timeout)).is_err() {
        return;
    }
    // A peer that does not read gets the timeout, then a closed socket.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .and_then(|()| stream.flush());
}

/// Releases a connection slot when the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `listener` until it fails: each connection on a thread of its
/// own (at most [`Limits::connections_max`]), one request each.
pub fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>, limits: Limits) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("metrics: accept: {e}");
                // EMFILE and friends: do not spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= limits.connections_max {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(
                "metrics: {} connections open already; closing one from {:?}",
                limits.connections_max,
                stream.peer_addr()
            );
            continue;
        }
        let slot = Slot(active.clone());
        let (render, limits) = (render.clone(), limits.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _slot = slot;
                if let Some(route) = read_head(&mut stream, &limits) {
                    answer(&mut stream, route, &*render, &limits);
                }
            });
        if let Err(e) = spawned {
            // The slot went down with the closure.
            tracing::warn!("metrics: starting a connection thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Shutdown;

    use super::*;

    #[test]
    fn routes_by_method_path_and_version() {
        let cases: &[(&[u8], Route)] = &[
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Route::Metrics),
            (b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", Route::Metrics),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET /metrics HTTP/2.0\r\n\r\n", Route::VersionNotSupported),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"get /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET /metrics FTP/1.1\r\n\r\n", Route::BadRequest),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"\r\n\r\n", Route::BadRequest),
        ];
        for (head, want) in cases {
            assert_eq!(route(head), *want, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    fn server(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, Arc::new(|| "xfuse_up 1\n".to_string()), limits));
        addr
    }

    fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may answer (and close) before it has read it all.
        let _ = s.write_all(request);
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }

    #[test]
    fn answers_metrics_and_refuses_the_rest_over_a_socket() {
        let addr = server(Limits::default());
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")), "{ok}");
        assert!(ok.ends_with("\r\n\r\nxfuse_up 1\n"), "{ok}");
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("Allow: GET\r\n"), "{post}");
        assert!(exchange(addr, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn a_head_over_the_limit_gets_431_without_being_read_to_its_end() {
        let addr = server(Limits {
            head_bytes_max: 64,
            ..Limits::default()
        });
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 100));
        big.extend_from_slice(b"\r\n\r\n");
        let reply = exchange(addr, &big);
        assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
        // Exactly at the limit still fits.
        let mut fits = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        fits.extend(std::iter::repeat_n(b'a', 64 - fits.len() - 4));
        fits.extend_from_slice(b"\r\n\r\n");
        assert_eq!(fits.len(), 64);
        let reply = exchange(addr, &fits);
        assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    }

    #[test]
    fn a_silent_peer_is_closed_after_the_timeout_and_frees_its_slot() {
        let addr = server(Limits {
            timeout: Duration::from_millis(200),
            connections_max: 1,
            ..Limits::default()
        });
        // The one slot, taken by a peer that never finishes its head.
        let mut silent = TcpStream::connect(addr).unwrap();
        silent.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let n = silent.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0, "closed unanswered: {:?}", String::from_utf8_lossy(&rest));
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = silent.shutdown(Shutdown::Both);
        // Its slot comes back: a later request is answered (the slot is
        // released by the connection's thread, just after the close).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
            if reply.starts_with("HTTP/1.1 200 ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never answered again; last reply {reply:?}"
            );
        }
    }

    #[test]
    fn connections_over_the_cap_are_closed_unanswered() {
        let addr = server(Limits {
            connections_max: 1,
            ..Limits::default()
        });
        let mut holder = TcpStream::connect(addr).unwrap();
        holder.write_all(b"GET /metr").unwrap();
        // Wait until the holder has its slot: a second connection is then
        // closed without a reply (until then it could be served).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
            if reply.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a second connection kept being served: {reply:?}"
            );
        }
        holder.write_all(b"ics HTTP/1.1\r\n\r\n").unwrap();
        let mut reply = String::new();
        holder.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    }
}
