//! Events across PID namespaces: senders report their own `getpid()`, and
//! every container has a pid 1. A real listener, real loaders in two PID
//! namespaces (`unshare --pid --fork --mount-proc`, so each loader is pid 1
//! inside and sees its own /proc, as in a container), both loading at once:
//! two streams, no bogus gap or restart, each with the pid the kernel gives
//! the listener and the container its cgroup names.
//!
//! The "containers" are real cgroups named as container runtimes name them
//! (`docker-ID.scope` on cgroup v2): /proc/PID/cgroup is what the listener
//! reads, and the kernel writes it the same way for docker's processes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A cgroup v2 directory of ours with one leaf per "container"; removed on
/// drop (after the processes in it are gone).
struct Cgroups {
    root: PathBuf,
    leaves: Vec<PathBuf>,
}

impl Cgroups {
    /// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
    /// on a hybrid system), from /proc/self/mountinfo.
    fn mount() -> PathBuf {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next() == Some("cgroup2"))
                    .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
            })
            .expect("no cgroup2 mount on this machine")
    }

    fn new(ids: &[&str]) -> Cgroups {
        let root = Self::mount().join(format!("spinguard-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let leaves = ids
            .iter()
            .map(|id| {
                let leaf = root.join(format!("docker-{id}.scope"));
                std::fs::create_dir(&leaf).unwrap_or_else(|e| panic!("{}: {e}", leaf.display()));
                leaf
            })
            .collect();
        Cgroups { root, leaves }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for l in &self.leaves {
            // The processes were killed and reaped before; give the kernel a
            // moment to empty the cgroup.
            for _ in 0..100 {
                if std::fs::remove_dir(l).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// `ARGS` as pid 1 of a new PID namespace, inside cgroup `leaf`.
fn in_container(leaf: &Path, args: &[&std::ffi::OsStr]) -> GroupGuard {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec unshare --pid --fork --mount-proc \"$@\"")
        .arg(leaf)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_guarded(&mut cmd)
}

/// `spinguard listen --json` with its stdout lines collected.
fn listen(path: &Path, metrics: &Path) -> (GroupGuard, Arc<Mutex<Vec<String>>>) {
    let mut g = spawn_guarded(
        Command::new(spinguard_bin())
            .args(["listen", "--json", "--metrics"])
            .arg(metrics)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let lines = collect_lines(g.child.stdout.take().unwrap());
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        assert!(Instant::now() < deadline, "no listener socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    (g, lines)
}

fn parse(lines: &Arc<Mutex<Vec<String>>>) -> Vec<Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The cgroups' container ids, and the 12 digits the listener reports.
const ID_A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
const ID_B: &str = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222";
const A: &str = "aaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbb";

/// Checks the streams of `source` in `events`: one per container, each
/// numbered from 1 to its summary with no gap but those its sender counted
/// as failed sends (the listener's queue is small: net.unix.max_dgram_qlen
/// is 10 on some kernels, and a busy machine can fill it), each reported by
/// the listener as exactly that; all carrying `pid`. Returns the listener's
/// pid of each stream's process by container.
fn streams(events: &[Value], source: &str, pid: Option<i64>) -> BTreeMap<String, i64> {
    // Unless given, the pid of the first event; both containers must have it.
    let pid = pid.unwrap_or_else(|| {
        let first = events.iter().find(|e| e["source"] == source);
        first.and_then(|e| e["pid"].as_i64()).unwrap_or(-1)
    });
    let mut by_container: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["source"] == source) {
        let c = e["origin"]["container"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        by_container.entry(c).or_default().push(e);
    }
    let containers: BTreeSet<&str> = by_container.keys().map(String::as_str).collect();
    assert_eq!(containers, BTreeSet::from([A, B]), "{source}: {events:#?}");
    let mut local = BTreeMap::new();
    for (c, es) in &by_container {
        let seqs: Vec<i64> = es.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(es.len() >= 3, "{source} in {c}: several events: {es:#?}");
        let summary = es.last().unwrap();
        assert_eq!(summary["event"], "summary", "{source} in {c}");
        assert_eq!(seqs[0], 1, "{source} in {c}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{source} in {c}: {seqs:?}"
        );
        let missing = summary["seq"].as_i64().unwrap() - seqs.len() as i64;
        let failed = summary["send_failures"].as_i64().unwrap();
        assert_eq!(
            missing, failed,
            "{source} in {c}: only what the sender could not send is missing"
        );
        let noted: i64 = events
            .iter()
            .filter(|e| e["event"] == "seq_gap" && e["stream"] == source)
            .filter(|e| e["origin"]["container"] == c.as_str())
            .map(|e| e["lost"].as_i64().unwrap())
            .sum();
        assert_eq!(
            noted, missing,
            "{source} in {c}: the listener's gaps are the real losses"
        );
        let pids: BTreeSet<i64> = es.iter().map(|e| e["pid"].as_i64().unwrap()).collect();
        assert_eq!(
            pids,
            BTreeSet::from([pid]),
            "{source} in {c}: the same pid in both namespaces"
        );
        let here: BTreeSet<i64> = es
            .iter()
            .map(|e| e["origin"]["pid"].as_i64().unwrap())
            .collect();
        assert_eq!(here.len(), 1, "{source} in {c}: one process: {here:?}");
        let here = *here.first().unwrap();
        assert!(
            here > 1 && here != pid,
            "{source} in {c}: a pid in our namespace: {here}"
        );
        let senders: BTreeSet<i64> = es
            .iter()
            .map(|e| e["origin"]["sender_pid"].as_i64().unwrap())
            .collect();
        assert_eq!(senders.len(), 1, "{source} in {c}: {senders:?}");
        assert!(
            es.iter().all(|e| e["origin"]["program"] == "rust-loader"),
            "{source} in {c}: {es:#?}"
        );
        local.insert(c.clone(), here);
    }
    assert_ne!(local[A], local[B], "{source}: two processes");
    local
}

#[test]
fn two_pid_namespaces_two_streams_no_bogus_gaps_or_restarts() {
    require_privileged!();
    let _s = serial();
    let scratch = Scratch::new("pidns");
    let sock = scratch.path("s.sock");
    let prom = scratch.path("m.prom");
    let cgroups = Cgroups::new(&[ID_A, ID_B]);
    let (listener, lines) = listen(&sock, &prom);
    let loader = example_bin("rust-loader");
    let shim = shim_path();
    // Two threads loading again and again for a second: the two streams
    // interleave at the listener (one merged stream would be all gaps and
    // restarts).
    // ~60 ms a load: a few dozen events a second from each sender, few
    // enough for the listener's small queue on a busy machine.
    let load = ["--threads", "2", "--iters", "50000", "--for", "1"];

    // The shim: the loader itself is pid 1 and sends.
    let preloaded = |leaf: &Path| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "env".into(),
            format!("LD_PRELOAD={}", shim.display()).into(),
            format!("SPINGUARD_EVENTS={}", sock.display()).into(),
            loader.clone().into(),
        ];
        args.extend(load.iter().map(Into::into));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        in_container(leaf, &args)
    };
    let (a, b) = (preloaded(&cgroups.leaves[0]), preloaded(&cgroups.leaves[1]));
    for (g, what) in [(a, "shim in A"), (b, "shim in B")] {
        let out = wait_timeout(g, TIMEOUT, what);
        assert!(out.status.success(), "{what}: {}", describe(&out));
        assert!(
            LoaderLine::parse(&String::from_utf8_lossy(&out.stdout)).result == "loaded",
            "{what}: {}",
            describe(&out)
        );
    }

    // The supervisor: spinguard run is pid 1; the loader it traces has the
    // same (small) pid in both namespaces.
    let supervised = |leaf: &Path| {
        let mut args: Vec<std::ffi::OsString> = vec![
            spinguard_bin().into(),
            "run".into(),
            "--mode".into(),
            "ptrace".into(),
            "--events".into(),
            sock.clone().into(),
            "--".into(),
            loader.clone().into(),
        ];
        args.extend(load.iter().map(Into::into));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        in_container(leaf, &args)
    };
    let (a, b) = (
        supervised(&cgroups.leaves[0]),
        supervised(&cgroups.leaves[1]),
    );
    for (g, what) in [(a, "run in A"), (b, "run in B")] {
        let out = wait_timeout(g, TIMEOUT, what);
        assert!(out.status.success(), "{what}: {}", describe(&out));
    }

    // Every stream ends with a summary; wait for the four.
    let deadline = Instant::now() + TIMEOUT;
    while parse(&lines)
        .iter()
        .filter(|e| e["event"] == "summary")
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "{:#?}", parse(&lines));
        std::thread::sleep(Duration::from_millis(20));
    }
    let events = parse(&lines);
    let notes: Vec<&Value> = events
        .iter()
        .filter(|e| e["source"] == "listener" && e["event"] != "seq_gap")
        .collect();
    assert!(notes.is_empty(), "no restart, no late start: {notes:#?}");
    let shim_pids = streams(&events, "shim", Some(1));
    let traced_pids = streams(&events, "supervisor", None);
    // The supervisor's traced process is not the sender: spinguard is.
    for e in events.iter().filter(|e| e["source"] == "supervisor") {
        assert_ne!(e["origin"]["sender_pid"], e["origin"]["pid"], "{e}");
    }
    assert!(shim_pids
        .values()
        .all(|p| !traced_pids.values().any(|q| q == p)));

    // Metrics by program and container, never by pid: one series per
    // container, every load counted.
    let loads = |c: &str| {
        events
            .iter()
            .filter(|e| e["source"] == "shim" && e["event"] == "prog_load")
            .filter(|e| e["origin"]["container"] == c)
            .count()
    };
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        let want = |c: &str| {
            format!(
                "spinguard_loads_total{{source=\"shim\",program=\"rust-loader\",container=\"{c}\",cmd=\"BPF_PROG_LOAD\"}} {}",
                loads(c)
            )
        };
        if [A, B].iter().all(|c| text.lines().any(|l| l == want(c))) {
            assert!(!text.contains("pid="), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "want {} and {}:\n{text}",
            want(A),
            want(B)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(listener);
    drop(cgroups);
}
