//! Where an event came from, as the listener can tell, whatever the sender's
//! PID namespace: senders report their own `getpid()`, so two containers'
//! pid 1 look alike. The kernel names the sending process in the listener's
//! namespace (SCM_CREDENTIALS, see `sys::recv`); /proc says the rest: the
//! process the event is about in our namespace, its container (the probe's
//! reading of /proc/PID/cgroup) and its program name (/proc/PID/comm).

use spinguard_common::events::Source;

/// What the listener learned about a stream's sender. Looked up once per
/// stream (and again when the stream starts over), not per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The sending process in the listener's pid namespace; 0 when the kernel
    /// could not say (a sender in a namespace the listener cannot see).
    pub sender: i32,
    /// The process the event is about, in the listener's pid namespace. The
    /// shim's is the sender itself; the supervisor's is a process it traces,
    /// found among its descendants when it runs in another namespace. None
    /// when it cannot be found (or has already exited).
    pub pid: Option<i32>,
    /// The container its cgroup names: the first 12 hex digits of the id, as
    /// `docker ps` shows it and the probe's events carry it.
    pub container: Option<String>,
    /// Its program name: the supervisor's `attach` comm, else /proc/PID/comm
    /// when first seen; "" when unknown.
    pub program: String,
}

/// Looks up what /proc says about a stream whose events carry `event_pid`
/// and were sent by `sender` (0: unknown). `comm` is a name the event itself
/// carries (the supervisor's `attach`), preferred over /proc's.
pub fn learn(source: Source, sender: i32, event_pid: i32, comm: Option<&str>) -> Origin {
    let mut o = Origin {
        sender: sender.max(0),
        ..Origin::default()
    };
    if sender > 0 {
        o.pid = match source {
            // The shim runs inside the process it reports on.
            Source::Shim => Some(sender),
            _ => match nspids(sender) {
                // The sender shares our namespace: its pids are ours.
                Some(ns) if ns.len() == 1 => Some(event_pid),
                Some(ns) => descendant_with_nspid(sender, ns.len(), event_pid),
                None => None,
            },
        };
        // The container of the process if found, else of the sender (a
        // supervisor runs in its program's container). One reading of
        // /proc/PID/cgroup for all of spinguard: the probe's.
        o.container = spinguard_probe::procfs::placement(o.pid.unwrap_or(sender)).container;
    }
    o.program = match comm {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => o
            .pid
            .and_then(|p| read(p, "comm"))
            .map(|c| c.trim_end_matches('\n').to_string())
            .unwrap_or_default(),
    };
    o
}

fn read(pid: i32, file: &str) -> Option<String> {
    let b = std::fs::read(format!("/proc/{pid}/{file}")).ok()?;
    Some(String::from_utf8_lossy(&b).into_owned())
}

/// The `NSpid:` line of /proc/PID/status: the process's pid in our namespace
/// first, then in each nested namespace down to its own.
fn nspids(pid: i32) -> Option<Vec<i32>> {
    parse_nspid(&read(pid, "status")?)
}

fn parse_nspid(status: &str) -> Option<Vec<i32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let v: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (!v.is_empty()).then_some(v)
}

/// Visiting more processes than this to find a supervisor's traced process
/// is not worth it: the stream keeps its key without a local pid.
const MAX_VISITED: usize = 4096;

/// Our pid of the process that is `ns_pid` in the namespace `depth` levels
/// down (the sender's), among `root` and its descendants: `spinguard run`
/// traces what it started. Walks /proc/PID/task/TID/children.
fn descendant_with_nspid(root: i32, depth: usize, ns_pid: i32) -> Option<i32> {
    let mut queue = std::collections::VecDeque::from([root]);
    let mut visited = 0;
    while let Some(pid) = queue.pop_front() {
        visited += 1;
        if visited > MAX_VISITED {
            return None;
        }
        if let Some(ns) = nspids(pid) {
            if ns.get(depth - 1) == Some(&ns_pid) {
                return Some(ns[0]);
            }
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = t.path().join("children");
            if let Ok(list) = std::fs::read_to_string(children) {
                queue.extend(
                    list.split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lines() {
        assert_eq!(
            parse_nspid("Name:\tx\nNSpid:\t4242\t1\n"),
            Some(vec![4242, 1])
        );
        assert_eq!(parse_nspid("NSpid:\t77\n"), Some(vec![77]));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }

    /// Our own process, sending as the shim would: the sender is the process,
    /// in our namespace, named as /proc names it.
    #[test]
    fn learns_about_itself() {
        let me = std::process::id() as i32;
        let o = learn(Source::Shim, me, me, None);
        assert_eq!(o.pid, Some(me));
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(o.program, comm.trim_end());
        // A supervisor in our namespace: the event's pid is ours to use.
        let o = learn(Source::Supervisor, me, 1, Some("agent"));
        assert_eq!((o.pid, o.program.as_str()), (Some(1), "agent"));
        // No credentials: nothing known but what the event says.
        let o = learn(Source::Shim, 0, 1, None);
        assert_eq!((o.sender, o.pid, o.container), (0, None, None));
    }
}
