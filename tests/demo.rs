//! `spinguard demo` is the first thing a newcomer runs: it must show the bug
//! and the cure, and a fresh clone must get there with the README's first
//! command alone.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

/// The row of the demo's table for `mechanism`, split into its columns.
fn row<'a>(table: &'a str, mechanism: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.starts_with(mechanism))
        .unwrap_or_else(|| panic!("no '{mechanism}' row in:\n{table}"));
    line[mechanism.len()..].split_whitespace().collect()
}

fn assert_demo_output(out: &std::process::Output) {
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", describe(out));
    let bare = row(&table, "unguarded");
    let attempts: u64 = bare[0].parse().expect("attempts column");
    assert!(
        attempts > 100 && bare[3] == "spinning",
        "unguarded should spin with hundreds of EAGAIN attempts:\n{table}"
    );
    for guarded in ["LD_PRELOAD shim", "spinguard run (ptrace)"] {
        let r = row(&table, guarded);
        assert_eq!(
            (r[0], r[3]),
            ("1", "loaded"),
            "{guarded} should load on the first attempt:\n{table}"
        );
    }
}

#[test]
fn demo_shows_the_spin_and_both_cures() {
    require_privileged!();
    let _s = serial();
    shim_path(); // the demo finds the shim next to the binary
    let out = run_timeout(
        Command::new(spinguard_bin()).arg("demo"),
        Duration::from_secs(60),
    );
    assert_demo_output(&out);
}

#[test]
fn demo_without_privileges_says_what_it_needs() {
    require_privileged!(); // needs root to drop to nobody
    let out = run_timeout(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(spinguard_bin())
            .arg("demo"),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, not a trace: {err}"
    );
    assert!(err.contains("CAP_BPF"), "{err}");
}

/// The README's first command, run in a fresh clone of the committed tree.
#[test]
fn fresh_clone_builds_and_runs_the_demo_with_the_readme_command() {
    require_privileged!();
    let _s = serial();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let first = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|block| block.lines().next())
        .expect("README has a ```sh block");
    let command = first.split('#').next().unwrap().trim().to_string();
    assert!(
        command.contains("cargo build") && command.contains("spinguard demo"),
        "the README's first command should build and run the demo: {command}"
    );

    // Clone what is committed, so a file someone forgot to add fails here.
    // A cold build of the clone, in its own target/ as the README says.
    let work = target_dir().join("fresh-clone");
    let clone = work.join("repo");
    let _ = std::fs::remove_dir_all(&clone);
    std::fs::create_dir_all(&work).unwrap();
    let out = run_timeout(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(repo)
            .arg(&clone),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "git clone: {}", describe(&out));
    let out = run_timeout(
        Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(&clone)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("SPINGUARD_SHIM"),
        Duration::from_secs(900),
    );
    assert_demo_output(&out);
    let _ = std::fs::remove_dir_all(&work);
}
