//! `--metrics HOST:PORT`: the endpoint is scraped while a workload runs,
//! its counters agree with the workload (N creates show as N), and
//! `promtool check metrics` (Debian's prometheus package, installed by
//! `scripts/setup.sh --tests`) accepts every exposition.
//!
//! - `xfused passthrough` on dev and on uring;
//! - `xfused mount` (embedded engine);
//! - `--cache-policy adaptive`: the long set fills as stats repeat, and
//!   every long inode changed through the mount shows as a demotion by
//!   change; the set is always what came in minus what went out;
//! - `xfused meta` and `xfused storage`, with a cluster mount writing
//!   through them: the services' request counters, the bytes the target
//!   took, the chain and target states.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Mount;
use rustix::process::{kill_process, Pid, Signal};

/// Files each workload creates.
const CREATES: usize = 40;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint's address, from the line xfused logs once at start.
fn metrics_addr(log: &str) -> Option<String> {
    let (_, rest) = log.split_once("metrics at http://")?;
    let (addr, _) = rest.split_once("/metrics")?;
    Some(addr.to_owned())
}

/// `GET /metrics`: the status line and the body.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(SCRAPE_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("reading from {addr}: {e}"));
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {reply:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the one series of `name` carrying every label in `labels`
/// (others may be there too), or `None`. Panics if several match.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let has = |k: &str, v: &str| {
            series_labels
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        };
        if labels.iter().all(|(k, v)| has(k, v)) {
            assert!(found.is_none(), "several {name}{labels:?} in\n{text}");
            found = Some(value.parse::<f64>().unwrap_or_else(|e| panic!("{line}: {e}")));
        }
    }
    found
}

/// The sum of every series of `name` carrying `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels.iter().all(|(k, v)| {
                    rest.trim_end_matches('}')
                        .split(',')
                        .any(|p| p == format!("{k}=\"{v}\""))
                }))
            .then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

/// `promtool check metrics` on `text`: no complaint at all. Returns false
/// (with the test recorded as missing the tool) where promtool is absent.
fn promtool_accepts(text: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            common::missing("promtool (Debian package prometheus; scripts/setup.sh --tests installs it)");
            return false;
        }
        Err(e) => panic!("spawning promtool: {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}): {said}\non:\n{text}",
        out.status
    );
    true
}

/// Creates `CREATES` files in `dir` while another thread scrapes `addr`
/// over and over; returns the scrapes taken during the workload. Each of
/// them must parse and show no more creates than were made.
fn creates_while_scraping(dir: &Path, addr: &str, transport: &str) -> Vec<String> {
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (done, addr) = (done.clone(), addr.to_owned());
        std::thread::spawn(move || {
            let mut scrapes = Vec::new();
            // At least one, however fast the workload.
            loop {
                scrapes.push(scrape(&addr));
                if done.load(Ordering::Acquire) {
                    return scrapes;
                }
            }
        })
    };
    std::fs::create_dir(dir).unwrap();
    for i in 0..CREATES {
        std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
    }
    done.store(true, Ordering::Release);
    let scrapes = scraper.join().unwrap();
    let mut last = 0.0;
    for text in &scrapes {
        let n = sample(
            text,
            "xfuse_requests_total",
            &[("transport", transport), ("opcode", "CREATE")],
        )
        .unwrap_or(0.0);
        assert!(
            n >= last && n <= CREATES as f64,
            "CREATE went from {last} to {n} during {CREATES} creates"
        );
        last = n;
    }
    scrapes
}

/// Scrapes a mount once the workload's last requests (a RELEASE the
/// kernel sends after close returned) are done, and checks what every
/// mount's exposition shows after the workload; returns the scrape.
fn check_mount(addr: &str, transport: &str) -> String {
    let t = ("transport", transport);
    // The scrape itself is no FUSE request: nothing stays in flight.
    let text = common::wait_for("no request in flight", SCRAPE_TIMEOUT, || {
        let text = scrape(addr);
        match sample(&text, "xfuse_requests_in_flight", &[t]) {
            Some(0.0) => Ok(text),
            _ => Err(text),
        }
    });
    let text = text.as_str();
    let creates = sample(text, "xfuse_requests_total", &[t, ("opcode", "CREATE")]);
    assert_eq!(creates, Some(CREATES as f64), "{CREATES} creates\n{text}");
    assert_eq!(
        sample(text, "xfuse_request_errors_total", &[t, ("opcode", "CREATE")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            text,
            "xfuse_request_duration_seconds_count",
            &[t, ("opcode", "CREATE")]
        ),
        Some(CREATES as f64),
        "every create timed\n{text}"
    );
    assert_eq!(
        sample(
            text,
            "xfuse_request_duration_seconds_bucket",
            &[t, ("opcode", "CREATE"), ("le", "+Inf")]
        ),
        Some(CREATES as f64)
    );
    assert!(
        sample(
            text,
            "xfuse_request_duration_seconds_sum",
            &[t, ("opcode", "CREATE")]
        )
        .unwrap()
            > 0.0
    );
    assert!(sample(text, "xfuse_transport_workers", &[t]).unwrap() >= 1.0);
    if transport == "uring" {
        let ring = sum(text, "xfuse_ring_queue_requests_total", &[t]);
        assert!(
            ring >= CREATES as f64,
            "the rings served the creates: {ring}\n{text}"
        );
        assert!(sample(text, "xfuse_ring_queue_depth_entries", &[t]).unwrap() >= 1.0);
    }
    text.to_owned()
}

fn uring_on() -> bool {
    let param = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring").unwrap_or_default();
    if param.trim() != "Y" {
        common::missing("FUSE-over-io_uring is off: scripts/setup.sh runs `xfused kernel enable-uring`");
        return false;
    }
    true
}

fn passthrough_on(transport: &str) {
    let mount = Mount::start(&["--transport", transport, "--metrics", "127.0.0.1:0"]);
    let log = mount.daemon_log();
    let addr = metrics_addr(&log).unwrap_or_else(|| panic!("no metrics address logged:\n{log}"));
    assert_eq!(
        log.matches("metrics at http://").count(),
        1,
        "logged once:\n{log}"
    );
    let before = scrape(&addr);
    assert_eq!(
        sample(&before, "xfuse_requests_total", &[("opcode", "CREATE")]),
        None,
        "no create yet"
    );
    let scrapes = creates_while_scraping(&mount.mnt().join("work"), &addr, transport);
    let after = check_mount(&addr, transport);
    for text in scrapes.iter().take(3).chain([&before, &after]) {
        if !promtool_accepts(text) {
            return;
        }
    }
}

#[test]
fn passthrough_on_dev_counts_every_create() {
    passthrough_on("dev");
}

#[test]
fn passthrough_on_uring_counts_every_create() {
    if uring_on() {
        passthrough_on("uring");
    }
}

#[test]
fn xfused_mount_counts_every_create() {
    let mount = Mount::start_meta(&["--metrics", "127.0.0.1:0"]);
    let log = mount.daemon_log();
    let addr = metrics_addr(&log).unwrap_or_else(|| panic!("no metrics address logged:\n{log}"));
    let transport = common::transport();
    creates_while_scraping(&mount.mnt().join("work"), &addr, &transport);
    let text = check_mount(&addr, &transport);
    // The embedded engine runs in the mount: its conflicts are the mount's.
    assert!(sample(&text, "xfuse_kv_conflicts_total", &[]).is_some(), "{text}");
    promtool_accepts(&text);
}

#[test]
fn the_adaptive_cache_shows_its_long_set_and_what_moved_it() {
    const FILES: usize = 20;
    let mount = Mount::start(&[
        "--cache-policy",
        "adaptive",
        "--cache-refresh-ms",
        "50",
        "--attr-timeout-ms",
        "0",
        "--entry-timeout-ms",
        "0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let log = mount.daemon_log();
    if log.contains("using fixed timeouts") {
        common::missing(&format!(
            "the BPF upcall counters (root, kernel BTF) for --cache-policy adaptive:\n{log}"
        ));
        return;
    }
    let addr = metrics_addr(&log).unwrap_or_else(|| panic!("no metrics address logged:\n{log}"));
    let names: Vec<PathBuf> = (0..FILES).map(|i| mount.mnt().join(format!("f{i}"))).collect();
    for n in &names {
        std::fs::write(n, b"x").unwrap();
    }
    let promoted = |text: &str| {
        sample(
            text,
            "xfuse_adaptive_transitions_total",
            &[("transition", "promoted")],
        )
        .unwrap_or(0.0)
    };
    // Stats of every file, again and again: their inodes turn hot.
    let text = common::wait_for("inodes promoted to the long set", Duration::from_secs(30), || {
        for n in &names {
            std::fs::metadata(n).unwrap();
        }
        let text = scrape(&addr);
        let long = sample(&text, "xfuse_adaptive_long_inodes", &[]).unwrap_or(0.0);
        if promoted(&text) >= 1.0 && long >= 1.0 {
            Ok(text)
        } else {
            Err(text)
        }
    });
    let moved_out = |text: &str| -> f64 {
        ["demoted_by_change", "demoted_idle"]
            .iter()
            .map(|t| sample(text, "xfuse_adaptive_transitions_total", &[("transition", t)]).unwrap())
            .sum()
    };
    // A change through the mount demotes the inode it changed, and tells
    // the kernel, before the chmod returns.
    let changes_before = sample(
        &text,
        "xfuse_adaptive_transitions_total",
        &[("transition", "demoted_by_change")],
    )
    .unwrap();
    let long_before = sample(&text, "xfuse_adaptive_long_inodes", &[]).unwrap();
    // Which inodes are long is the policy's (the files', and the root's,
    // looked up on every path); changing them all changes every long one.
    for n in &names {
        std::fs::set_permissions(n, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(mount.mnt(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let after = scrape(&addr);
    let changes = sample(
        &after,
        "xfuse_adaptive_transitions_total",
        &[("transition", "demoted_by_change")],
    )
    .unwrap();
    assert!(
        changes - changes_before >= long_before,
        "{long_before} long inodes changed: demotions by change {changes_before} -> {changes}\n{after}"
    );
    assert!(sample(&after, "xfuse_adaptive_invalidations_total", &[]).unwrap() >= 1.0);
    // Hot means asked about repeatedly: at least twice per long inode.
    let upcalls = sample(&text, "xfuse_adaptive_upcalls_total", &[]).unwrap();
    assert!(upcalls >= 2.0 * long_before, "{upcalls} upcalls counted\n{text}");
    // The long set is what came in minus what went out. A refresh may run
    // between the reads of one scrape, so this holds of a quiet one.
    common::wait_for("long set = promoted - demoted", SCRAPE_TIMEOUT, || {
        let text = scrape(&addr);
        let long = sample(&text, "xfuse_adaptive_long_inodes", &[]).unwrap();
        if promoted(&text) - moved_out(&text) == long {
            Ok(())
        } else {
            Err(text)
        }
    });
    promtool_accepts(&after);
}

#[test]
fn a_metrics_address_in_use_fails_the_command_before_it_mounts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xfused"))
        .args(["passthrough", "--metrics", &addr])
        .args([&src, &mnt])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("--metrics {addr}: cannot listen")),
        "{stderr}"
    );
    assert_eq!(common::mount_fstype(&mnt), None, "nothing mounted");
}

/// A service process, killed on drop.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn spawn(args: &[String], log: PathBuf) -> Service {
        let child = common::spawn_xfused(args, &log);
        Service { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The service's address (after `marker`) and its metrics address,
    /// once both are logged.
    fn wait_ready(&mut self, marker: &str) -> (String, String) {
        common::wait_for(marker, Duration::from_secs(30), || {
            let text = self.log();
            let listening = text
                .split_once(marker)
                .and_then(|(_, rest)| rest.split_once(','))
                .map(|(a, _)| a.to_owned());
            if let (Some(a), Some(m)) = (listening, metrics_addr(&text)) {
                return Ok((a, m));
            }
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                panic!("xfused exited ({status}) before listening:\n{text}");
            }
            Err(text)
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = kill_process(Pid::from_child(&self.child), Signal::KILL);
        let _ = self.child.wait();
    }
}

#[test]
fn meta_and_storage_services_count_what_a_cluster_mount_makes_them_do() {
    const FILE_BYTES: usize = 64 * 1024;
    let dir = tempfile::Builder::new()
        .prefix("xfuse-metrics.")
        .tempdir()
        .unwrap();
    let credential = dir.path().join("cluster.pem");
    let cred = credential.display().to_string();
    let mut meta = Service::spawn(
        &[
            "meta".into(),
            "--engine".into(),
            format!("embedded:{}", dir.path().join("meta").display()),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--credential".into(),
            cred.clone(),
            "--metrics".into(),
            "127.0.0.1:0".into(),
        ],
        dir.path().join("meta.log"),
    );
    let (meta_addr, meta_metrics) = meta.wait_ready("metadata service on ");
    let mut storage = Service::spawn(
        &[
            "storage".into(),
            "--meta".into(),
            format!("tcp://{meta_addr}"),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--target".into(),
            dir.path().join("target0").display().to_string(),
            "--credential".into(),
            cred.clone(),
            "--metrics".into(),
            "127.0.0.1:0".into(),
        ],
        dir.path().join("storage.log"),
    );
    let (_, storage_metrics) = storage.wait_ready("storage service on ");
    // The target up, as its own service sees it (chains come with the
    // first file's layout).
    common::wait_for("the target up", Duration::from_secs(60), || {
        let text = scrape(&storage_metrics);
        match sample(&text, "xfuse_cluster_target_up", &[]) {
            Some(1.0) => Ok(()),
            _ => Err(format!("{text}\n{}", storage.log())),
        }
    });

    let meta_url = format!("tcp://{meta_addr}");
    let mount = Mount::start_cluster(&[
        "--meta",
        &meta_url,
        "--credential",
        &cred,
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mount_log = mount.daemon_log();
    let mount_metrics = metrics_addr(&mount_log).unwrap_or_else(|| panic!("{mount_log}"));
    let meta_before = scrape(&meta_metrics);
    let served_before = sample(
        &meta_before,
        "xfuse_rpc_server_requests_total",
        &[("service", "meta")],
    )
    .unwrap();

    let work = mount.mnt().join("work");
    std::fs::create_dir(&work).unwrap();
    let data = common::pattern(FILE_BYTES, 7);
    for i in 0..CREATES {
        let mut f = std::fs::File::create(work.join(format!("f{i}"))).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        if i == CREATES / 2 {
            // Mid-workload: every service answers and parses.
            for addr in [&meta_metrics, &storage_metrics, &mount_metrics] {
                promtool_accepts(&scrape(addr));
            }
        }
    }

    let transport = common::transport();
    let mount_text = check_mount(&mount_metrics, &transport);
    let meta_calls = sample(
        &mount_text,
        "xfuse_rpc_client_calls_total",
        &[("service", "meta")],
    )
    .unwrap();
    assert!(
        meta_calls >= CREATES as f64,
        "each create is a call to the metadata service: {meta_calls}"
    );
    let storage_calls = sample(
        &mount_text,
        "xfuse_rpc_client_calls_total",
        &[("service", "storage")],
    )
    .unwrap();
    assert!(
        storage_calls >= CREATES as f64,
        "each file's data went to the target: {storage_calls}"
    );
    // A write asks the metadata service only to commit its size: the
    // file's record is read once, at its first write (it was one more
    // call per write).
    const WRITES: u64 = 64;
    let meta_calls = || {
        sample(
            &scrape(&mount_metrics),
            "xfuse_rpc_client_calls_total",
            &[("service", "meta")],
        )
        .unwrap()
    };
    let f = std::fs::File::create(work.join("written")).unwrap();
    let before = meta_calls();
    for i in 0..WRITES {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[i as u8; 4096], i * 4096).unwrap();
    }
    let calls = meta_calls() - before;
    assert!(
        (WRITES as f64..=WRITES as f64 + 3.0).contains(&calls),
        "{WRITES} writes made {calls} calls to the metadata service"
    );

    let meta_text = scrape(&meta_metrics);
    let served = sample(
        &meta_text,
        "xfuse_rpc_server_requests_total",
        &[("service", "meta")],
    )
    .unwrap();
    assert!(
        served - served_before >= CREATES as f64,
        "the service answered at least the creates: {served_before} -> {served}"
    );
    assert!(sample(&meta_text, "xfuse_rpc_server_connections", &[("service", "meta")]).unwrap() >= 1.0);
    // Metadata frames are small: nothing is held between requests.
    assert_eq!(
        sample(&meta_text, "xfuse_rpc_server_held_bytes", &[("service", "meta")]),
        Some(0.0)
    );
    assert!(
        sample(
            &meta_text,
            "xfuse_rpc_server_request_duration_seconds_count",
            &[("service", "meta")]
        )
        .unwrap()
            >= served
    );

    let storage_text = scrape(&storage_metrics);
    let updated = sum(
        &storage_text,
        "xfuse_storage_moved_bytes_total",
        &[("op", "update")],
    );
    assert!(
        updated >= (CREATES * FILE_BYTES) as f64,
        "{CREATES} files of {FILE_BYTES} bytes reached the target: {updated}\n{storage_text}"
    );
    assert!(
        sample(
            &storage_text,
            "xfuse_rpc_server_requests_total",
            &[("service", "storage")]
        )
        .unwrap()
            >= CREATES as f64
    );
    assert_eq!(
        sum(
            &storage_text,
            "xfuse_cluster_chain_member_state",
            &[("state", "offline")]
        ),
        0.0
    );
    // A file held open is in the service's table (an embedded store is
    // the service's own), and leaves it when closed.
    // (The harness may hold a file of its own open: counted from here.)
    let open_before = sample(&scrape(&meta_metrics), "xfuse_meta_open_handles", &[]).unwrap();
    let held = std::fs::File::open(work.join("f0")).unwrap();
    let handles = |want: f64| {
        common::wait_for("the service's open handles", Duration::from_secs(30), || {
            let text = scrape(&meta_metrics);
            match sample(&text, "xfuse_meta_open_handles", &[]) {
                Some(n) if n == want => Ok(()),
                other => Err(format!("{other:?} open handles, not {want}\n{text}")),
            }
        })
    };
    handles(open_before + 1.0);
    assert_eq!(
        sample(&scrape(&meta_metrics), "xfuse_meta_grace_clients_awaited", &[]),
        Some(0.0),
        "no grace period: the service started on an empty store"
    );
    drop(held);
    handles(open_before);
    for text in [&meta_text, &storage_text, &mount_text] {
        if !promtool_accepts(text) {
            return;
        }
    }
}
