//! The deployment examples in examples/deploy are real: the systemd unit
//! verifies and its ExecStart runs, the entrypoint guards a loader, the pod
//! spec parses and grants what attach/diagnose need.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/deploy")
        .join(file)
}

/// The unit with its placeholder paths pointed at real binaries: spinguard,
/// and the Rust loader under a storm standing in for the agent.
fn unit_with_real_paths(dir: &Path) -> (PathBuf, String) {
    let unit = std::fs::read_to_string(deploy("spinguard-agent.service")).unwrap();
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

#[test]
fn container_entrypoint_guards_the_command() {
    require_privileged!();
    let _s = serial();
    let bin_dir = spinguard_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = run_timeout(
        Command::new(deploy("entrypoint.sh"))
            .arg(example_bin("rust-loader"))
            .args(["--storm-hz", "1000", "--wait", "3"])
            .env("PATH", &path),
        Duration::from_secs(60),
    );
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (l.result.as_str(), l.get("attempts")),
        ("loaded", Some(1)),
        "{}",
        describe(&out)
    );

    let out = run_timeout(
        Command::new(deploy("entrypoint.sh")).env("PATH", &path),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
}

#[test]
fn kubernetes_debug_pod_shares_pids_and_grants_ptrace() {
    let text = std::fs::read_to_string(deploy("debug-pod.yaml")).unwrap();
    let pod: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    assert_eq!(pod["kind"].as_str(), Some("Pod"));
    assert_eq!(pod["spec"]["shareProcessNamespace"].as_bool(), Some(true));
    let containers = pod["spec"]["containers"].as_sequence().expect("containers");
    let debug = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("spinguard"))
        .expect("a spinguard container");
    let caps = debug["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add");
    assert!(
        caps.iter().any(|c| c.as_str() == Some("SYS_PTRACE")),
        "attach/diagnose need SYS_PTRACE: {caps:?}"
    );
}
