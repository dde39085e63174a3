//! The deployment files for `spinguard watch` are real: the DaemonSet passes
//! the Kubernetes schemas (kubernetes-validate, offline) and its command
//! runs with exactly the capabilities it grants; the systemd unit verifies
//! and its ExecStart runs within its capability bounding set; the example
//! alerting rule passes promtool and fires on the series watch itself
//! exports for a spinning loader, and only for it.

mod support;

use serde_yaml::Value as Yaml;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn require(program: &str, how: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{program}` not found in PATH: {how}"))
}

/// `setpriv` limiting the bounding set to `caps` (names without CAP_),
/// then `argv`: root keeps only those capabilities across the exec.
fn with_only_caps(caps: &[String], argv: &[String]) -> Command {
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut c = Command::new("setpriv");
    c.args(["--bounding-set", &set, "--inh-caps", "-all", "--"])
        .args(argv);
    c
}

#[test]
fn daemonset_validates_and_its_command_runs_with_what_it_grants() {
    let file = deploy("kubernetes/spinguard-watch-daemonset.yaml");
    let validate = require(
        "kubernetes-validate",
        "pip install kubernetes-validate (scripts/test installs it)",
    );
    let out = run_timeout(Command::new(validate).arg("--strict").arg(&file), TIMEOUT);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("passed"),
        "{}",
        describe(&out)
    );

    let ds: Yaml = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostPID"].as_bool(),
        Some(true),
        "watch must see every process"
    );
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("Unconfined"));
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for need in ["BPF", "PERFMON", "SYS_PTRACE"] {
        assert!(caps.iter().any(|c| c == need), "{need} missing: {caps:?}");
    }
    // A rescue of another pod's process must not be refused by the
    // runtime's default AppArmor profile.
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]
            ["container.apparmor.security.beta.kubernetes.io/watch"]
            .as_str(),
        Some("unconfined")
    );
    let host_path = |mount: &str| {
        let name = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(mount))
            .unwrap_or_else(|| panic!("no mount at {mount}"))["name"]
            .clone();
        spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["hostPath"]["path"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(host_path("/sys/kernel/tracing"), "/sys/kernel/tracing");
    assert_eq!(host_path("/sys/fs/bpf"), "/sys/fs/bpf");
    let mut argv: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(argv[0], "watch");
    assert!(argv.iter().any(|a| a == "--rescue"), "{argv:?}");
    let addr = argv[argv.iter().position(|a| a == "--metrics-addr").unwrap() + 1].clone();
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(
        addr,
        format!(":{port}"),
        "the port it serves is the one it declares"
    );

    // The command itself, as root with only the granted capabilities (the
    // host's tracefs already mounted, as the DaemonSet mounts it).
    require_privileged!();
    let _s = serial();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let i = argv.iter().position(|a| a == "--metrics-addr").unwrap();
    argv[i + 1] = free.to_string();
    argv.insert(0, spinguard_bin().display().to_string());
    let mut short = argv.clone();
    short.extend(["--for".into(), "2s".into()]);
    let out = run_timeout(&mut with_only_caps(&caps, &short), TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{short:?}: {}", describe(&out));

    // And its --rescue really rescues with those capabilities alone: a
    // spinner of this test's own (the rescue confined to its cgroup, as
    // other loaders spin on this host), watched every second.
    let cg = support::cgroup::Cgroup::new("daemonset");
    let spinner = spawn_guarded(
        Command::new(example_bin("rust-loader"))
            .args(["--storm-hz", "1000", "--wait", "60", "--iters", "300000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let spid = spinner.pid();
    cg.add(spid);
    let i = argv.iter().position(|a| a == "--interval").unwrap();
    argv[i + 1] = "1s".into();
    argv.extend(["--rescue-cgroup", &cg.name, "--linger", "1s", "--for", "8s"].map(String::from));
    let out = run_timeout(&mut with_only_caps(&caps, &argv), TIMEOUT);
    let loader = wait_timeout(
        spinner,
        TIMEOUT,
        "the spinner under the DaemonSet's command",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        String::from_utf8_lossy(&loader.stdout).starts_with("loaded "),
        "not rescued: {}\n{}",
        describe(&loader),
        describe(&out)
    );
    assert!(
        text.contains(&format!("pid {spid} (rust-loader): rescued: loaded")),
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{argv:?}: {}", describe(&out));
}

#[test]
fn systemd_unit_verifies_and_runs_within_its_bounding_set() {
    let unit = std::fs::read_to_string(deploy("systemd/spinguard-watch.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .to_string();
    assert!(
        exec.starts_with("/usr/local/bin/spinguard watch "),
        "{exec}"
    );
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    let scratch = Scratch::new("watch-unit");
    let prom = scratch.path("spinguard.prom");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut argv: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    argv[0] = spinguard_bin().display().to_string();
    for a in argv.iter_mut() {
        if a.ends_with(".prom") {
            *a = prom.display().to_string();
        } else if a.starts_with("127.0.0.1:") {
            *a = addr.clone();
        }
    }
    // systemd-analyze checks the unit's syntax and that ExecStart exists.
    let real = unit.replace(&exec, &argv.join(" "));
    let path = scratch.path("spinguard-watch.service");
    std::fs::write(&path, real).unwrap();
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = run_timeout(
            Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&path),
            TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("spinguard-watch.service"))
            .collect();
        assert!(
            ours.is_empty(),
            "systemd-analyze verify: {}",
            describe(&out)
        );
    } else {
        eprintln!("SKIP (verify only): systemd-analyze is not installed");
    }
    require_privileged!();
    let _s = serial();
    argv.extend(["--for".into(), "2s".into()]);
    let out = run_timeout(&mut with_only_caps(&caps, &argv), TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{argv:?}: {}", describe(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("spinguard_watch_counting"), "{text}");
}

/// The alerting rule, against the series watch really exports: watch
/// --metrics on a spinning loader and a healthy one, their
/// `spinguard_watch_livelocked_processes` lines turned into promtool's input
/// series; the alert fires for the spinner after its `for`, not for the other.
#[test]
fn alert_rule_fires_on_a_livelocked_process() {
    let promtool = require("promtool", "apt-get install prometheus");
    let rules = deploy("prometheus/spinguard-alerts.yml");
    let out = run_timeout(
        Command::new(&promtool).args(["check", "rules"]).arg(&rules),
        TIMEOUT,
    );
    assert!(out.status.success(), "{}", describe(&out));

    require_privileged!();
    let _s = serial();
    let scratch = Scratch::new("alerts");
    let prom = scratch.path("w.prom");
    let spinner = spawn_guarded(
        Command::new(example_bin("rust-loader"))
            .args(["--storm-hz", "1000", "--wait", "60"])
            .stdout(Stdio::null()),
    );
    let healthy = spawn_guarded(
        Command::new(example_bin("syscall-loop"))
            .args(["--call", "prog-load", "--forever"])
            .stdout(Stdio::null()),
    );
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args([
                "watch",
                "--trace-always",
                "--interval",
                "500ms",
                "--for",
                "3s",
                "--metrics",
            ])
            .arg(&prom),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    drop((spinner, healthy));
    let text = std::fs::read_to_string(&prom).unwrap();
    let series: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("spinguard_watch_livelocked_processes{"))
        .filter_map(|l| {
            let (labels, v) = l.split_once("} ")?;
            Some((labels.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let spin = series
        .iter()
        .find(|(l, v)| l.contains("comm=\"rust-loader\"") && *v >= 1)
        .unwrap_or_else(|| panic!("no livelocked rust-loader in:\n{text}"));
    let calm = series
        .iter()
        .find(|(l, v)| l.contains("comm=\"syscall-loop\"") && *v == 0)
        .unwrap_or_else(|| panic!("no healthy syscall-loop in:\n{text}"));
    // Prometheus drops a label whose value is empty (container="" for a
    // process on the host), so the alert has no container label here.
    let input = |(labels, v): &(String, u64)| {
        format!(
            "      - series: 'spinguard_watch_livelocked_processes{{{labels},instance=\"node1\"}}'\n        values: '{v}x10'\n"
        )
    };
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 15s\ntests:\n  - interval: 15s\n    input_series:\n{}{}    alert_rule_test:\n      - eval_time: 15s\n        alertname: EbpfLoaderLivelocked\n        exp_alerts: []\n      - eval_time: 1m\n        alertname: EbpfLoaderLivelocked\n        exp_alerts:\n          - exp_labels:\n              severity: critical\n              instance: node1\n              comm: rust-loader\n            exp_annotations:\n              summary: 'rust-loader is spinning in bpf(BPF_PROG_LOAD) on node1'\n              description: '{}'\n",
        rules.display(),
        input(spin),
        input(calm),
        "The guarded bpf calls of rust-loader (container \"\") keep failing with EAGAIN: a signal storm (a profiler, a timer) interrupts the verifier every time. Rescue it now with `spinguard attach PID` (find the PID with `spinguard diagnose --comm rust-loader`), and start it under `spinguard run` (or the LD_PRELOAD shim) from now on."
    );
    let test_file = scratch.path("alerts_test.yml");
    std::fs::write(&test_file, &test).unwrap();
    let out = run_timeout(
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&test_file),
        TIMEOUT,
    );
    assert!(out.status.success(), "{test}\n{}", describe(&out));
}
