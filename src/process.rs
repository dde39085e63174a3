//! Naming a process: `--comm NAME` to a pid, the way `pgrep -x NAME` would,
//! with an error that lists what it found when the answer is not one process.

use std::fmt;

/// The kernel keeps at most this many bytes of a name (TASK_COMM_LEN 16,
/// NUL included); a longer name is truncated in /proc/PID/comm.
pub const COMM_LEN: usize = 15;

/// A live user process as /proc/PID/stat names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub comm: String,
}

/// Why `--comm NAME` did not give one process. Displays as one line that
/// lists the candidates, so the user can pick one with `--pid`.
#[derive(Debug, PartialEq, Eq)]
pub enum NameError {
    /// Nothing is named NAME; `similar` holds processes whose name contains
    /// it, ignoring case.
    NoMatch { name: String, similar: Vec<Process> },
    /// More than one process is named NAME.
    Ambiguous { name: String, matches: Vec<Process> },
}

/// How many candidates an error lists before "and N more".
pub const LISTED: usize = 8;

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::NoMatch { name, similar } => {
                write!(f, "no process named {name:?}")?;
                if similar.is_empty() {
                    Ok(())
                } else {
                    write!(f, " (similar: {})", list(similar, true))
                }
            }
            NameError::Ambiguous { name, matches } => write!(
                f,
                "{} processes named {name:?}: {}; choose one with --pid",
                matches.len(),
                list(matches, false)
            ),
        }
    }
}

fn list(ps: &[Process], with_names: bool) -> String {
    let mut s: Vec<String> = ps
        .iter()
        .take(LISTED)
        .map(|p| {
            if with_names {
                format!("{} ({})", p.comm, p.pid)
            } else {
                p.pid.to_string()
            }
        })
        .collect();
    if ps.len() > LISTED {
        s.push(format!("and {} more", ps.len() - LISTED));
    }
    s.join(", ")
}

/// True when a process whose /proc/PID/comm is `comm` is named `name`: the
/// same string, or, for a name longer than the kernel keeps, its first
/// [`COMM_LEN`] bytes (`pgrep -x` would find nothing for those).
pub fn is_named(comm: &str, name: &str) -> bool {
    comm == name || (name.len() > COMM_LEN && comm == kernel_truncated(name))
}

/// `name` as the kernel stores it: cut at [`COMM_LEN`] bytes, even inside a
/// UTF-8 character, then read as [`user_processes`] reads comm (lossily).
fn kernel_truncated(name: &str) -> std::borrow::Cow<'_, str> {
    let b = name.as_bytes();
    String::from_utf8_lossy(&b[..b.len().min(COMM_LEN)])
}

/// The one process named `name` among `all`.
pub fn pick(all: &[Process], name: &str) -> Result<i32, NameError> {
    let matches: Vec<Process> = all
        .iter()
        .filter(|p| is_named(&p.comm, name))
        .cloned()
        .collect();
    match matches.len() {
        1 => Ok(matches[0].pid),
        0 => {
            let needle = kernel_truncated(name).to_lowercase();
            let similar: Vec<Process> = all
                .iter()
                .filter(|p| p.comm.to_lowercase().contains(&needle))
                .cloned()
                .collect();
            Err(NameError::NoMatch {
                name: name.to_string(),
                similar,
            })
        }
        _ => Err(NameError::Ambiguous {
            name: name.to_string(),
            matches,
        }),
    }
}

/// The pid of the one live user process named `name`, other than this one
/// (kernel threads and zombies are left out: neither can be traced).
pub fn by_name(name: &str) -> Result<i32, NameError> {
    pick(&user_processes(), name)
}

/// PF_KTHREAD, from include/linux/sched.h: the `flags` field of
/// /proc/PID/stat has it for kernel threads.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Every live user process but this one, by pid.
fn user_processes() -> Vec<Process> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut all: Vec<Process> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            // Gone since the listing: not a candidate.
            let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
            let stat = String::from_utf8_lossy(&stat);
            let (comm, state, flags) = parse_stat(&stat)?;
            let dead = matches!(state, 'Z' | 'X');
            (!dead && flags & PF_KTHREAD == 0).then(|| Process {
                pid,
                comm: comm.to_string(),
            })
        })
        .collect();
    all.sort_by_key(|p| p.pid);
    all
}

/// `(comm, state, flags)` from a /proc/PID/stat line. The name sits between
/// the first '(' and the LAST ')': it may itself hold spaces and parentheses
/// (proc_pid_stat(5)).
fn parse_stat(stat: &str) -> Option<(&str, char, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    // After the state: ppid pgrp session tty_nr tpgid, then flags.
    let flags = rest.nth(5)?.parse().ok()?;
    Some((comm, state, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, comm: &str) -> Process {
        Process {
            pid,
            comm: comm.into(),
        }
    }

    #[test]
    fn one_match_is_the_answer() {
        let all = [p(10, "agent"), p(11, "agent-helper"), p(12, "sh")];
        assert_eq!(pick(&all, "agent"), Ok(10));
    }

    #[test]
    fn none_lists_similar_names() {
        let all = [p(10, "Agent"), p(11, "my-agent"), p(12, "sh")];
        let e = pick(&all, "agen").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no process named \"agen\" (similar: Agent (10), my-agent (11))"
        );
        let e = pick(&all, "zzz").unwrap_err();
        assert_eq!(e.to_string(), "no process named \"zzz\"");
    }

    #[test]
    fn many_lists_the_pids_and_says_how_to_choose() {
        let all: Vec<Process> = (1..=10).map(|i| p(i, "agent")).collect();
        let e = pick(&all, "agent").unwrap_err();
        assert_eq!(
            e.to_string(),
            "10 processes named \"agent\": 1, 2, 3, 4, 5, 6, 7, 8, and 2 more; choose one with --pid"
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn a_name_longer_than_the_kernel_keeps_matches_its_prefix() {
        let all = [p(7, "very-long-agent")];
        assert_eq!(pick(&all, "very-long-agent-name"), Ok(7));
        assert!(pick(&all, "very-long-agen").is_err());
        // The kernel cuts bytes, even inside a character; no panic here.
        let name = "abcdefghijklmné-agent";
        assert!(is_named("abcdefghijklmn\u{FFFD}", name));
        assert!(pick(&[p(3, "x")], "ééééééééééé").is_err());
    }

    #[test]
    fn stat_with_parentheses_in_the_name() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0";
        assert_eq!(parse_stat(line), Some(("a) b (c)", 'S', 4194560)));
        assert_eq!(parse_stat("42 (x"), None);
    }

    #[test]
    fn finds_a_real_child_by_name_and_not_itself() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // The child is "sleep" once exec is done; poll briefly for it.
        let pid = child.id() as i32;
        let mut seen = false;
        for _ in 0..200 {
            if user_processes()
                .iter()
                .any(|q| q.pid == pid && q.comm == "sleep")
            {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let me = std::process::id() as i32;
        let all = user_processes();
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen, "sleep {pid} not listed");
        assert!(all.iter().all(|q| q.pid != me), "lists itself");
        assert!(
            all.iter().all(|q| q.pid != 2),
            "lists kthreadd (a kernel thread)"
        );
    }
}
