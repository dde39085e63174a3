//! The systemd unit in deploy/systemd is real: it verifies and its ExecStart
//! guards a loader. (The container image is tested in tests/image.rs, the
//! Kubernetes recipes in tests/kubernetes.rs.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// The unit with its placeholder paths pointed at real binaries: spinguard,
/// and the Rust loader under a storm standing in for the agent.
fn unit_with_real_paths(dir: &Path) -> (PathBuf, String) {
    let unit = std::fs::read_to_string(deploy("systemd/spinguard-agent.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart")
        .to_string();
    assert!(
        exec.starts_with("/usr/local/bin/spinguard run -- "),
        "ExecStart should wrap the agent in spinguard run: {exec}"
    );
    let agent = format!(
        "{} --storm-hz 1000 --wait 3",
        example_bin("rust-loader").display()
    );
    let real_exec = format!("{} run -- {agent}", spinguard_bin().display());
    let path = dir.join("spinguard-agent.service");
    std::fs::write(&path, unit.replace(&exec, &real_exec)).unwrap();
    (path, real_exec)
}

#[test]
fn systemd_unit_verifies() {
    let scratch = Scratch::new("unit");
    let dir = scratch.dir();
    let (unit, _) = unit_with_real_paths(dir);
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP: systemd-analyze is not installed; the unit was only parsed");
        return;
    };
    assert!(out.status.success());
    let out = run_timeout(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("spinguard-agent.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify complains: {}",
        describe(&out)
    );
}

#[test]
fn systemd_unit_exec_start_guards_the_agent() {
    require_privileged!();
    let _s = serial();
    let scratch = Scratch::new("unit-exec");
    let dir = scratch.dir();
    let (_, exec) = unit_with_real_paths(dir);
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let out = run_timeout(
        Command::new(argv[0]).args(&argv[1..]),
        Duration::from_secs(60),
    );
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (l.result.as_str(), l.get("attempts")),
        ("loaded", Some(1)),
        "the unit's ExecStart did not guard the load: {}",
        describe(&out)
    );
}
