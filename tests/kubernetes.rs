//! The Kubernetes recipes (deploy/kubernetes and the README's kubectl debug
//! commands). Every manifest passes the Kubernetes API schemas offline
//! (kubernetes-validate, strict). Each recipe also runs for real, with no
//! cluster: pod templates on the private docker daemon (tests/support/pod.rs),
//! and `kubectl debug --target=agent --profile=sysadmin` as the ephemeral
//! container kubectl adds: privileged, in the target container's PID
//! namespace (`docker run --pid container:…`), the agent left running
//! (diagnose and attach from there), and `kubectl debug node/…` as a
//! privileged container in the node's (`--pid host`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(120);
/// The oldest Kubernetes the recipes are for (ephemeral containers are GA
/// since 1.25) and the newest schema the validator has.
const K8S_VERSIONS: [&str; 2] = ["1.25", "1.37"];
/// The third-party agent in the manifests and the README.
const AGENT_IMAGE: &str = "registry.example/my-ebpf-agent:1.0";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no manifests in {}", dir.display());
    v
}

fn validate(files: &[PathBuf], version: &str) -> std::process::Output {
    let Some(tool) = find_in_path("kubernetes-validate") else {
        panic!("kubernetes-validate not found (pip install kubernetes-validate; scripts/test does)")
    };
    run_timeout(
        Command::new(tool)
            .args(["--strict", "-k", version])
            .args(files),
        T,
    )
}

/// The spinguard image the manifests name: registry.example/spinguard:VERSION,
/// the version being the crate's (so the recipes follow releases).
fn spinguard_image_in_manifests() -> String {
    format!("registry.example/spinguard:{}", env!("CARGO_PKG_VERSION"))
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas() {
    let files = manifests();
    for v in K8S_VERSIONS {
        let out = validate(&files, v);
        assert!(out.status.success(), "against {v}: {}", describe(&out));
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        for f in &files {
            let passed = text
                .lines()
                .any(|l| l.contains(&*f.to_string_lossy()) && l.contains("passed"));
            assert!(passed, "{} not validated against {v}: {text}", f.display());
        }
    }

    // Strict means a misspelled field fails: the check can fail.
    let scratch = Scratch::new("k8s-typo");
    let typo = scratch.path("typo.yaml");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("volumeMounts:"));
    std::fs::write(&typo, text.replacen("volumeMounts:", "volumeMount:", 1)).unwrap();
    let out = validate(std::slice::from_ref(&typo), K8S_VERSIONS[1]);
    assert!(
        !out.status.success(),
        "a misspelled field passed: {}",
        describe(&out)
    );

    // Every spinguard image they name is this release's.
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines().filter(|l| l.contains("image: ")) {
            let image = line.split("image: ").nth(1).unwrap().trim();
            if image.contains("/spinguard:") {
                assert_eq!(image, spinguard_image_in_manifests(), "{}", f.display());
            }
        }
    }
}

/// The agent's own flags in the tests: a 1 kHz SIGPROF storm.
const STORM: [&str; 2] = ["--storm-hz", "1000"];

#[test]
fn the_guarded_agent_daemonset_loads_first_time_and_reports_to_the_listener() {
    require_privileged!();
    let _s = serial();
    let Some(docker) = dockerd() else { return };
    let scratch = Scratch::new("k8s-guarded");
    let image = dist_image(&docker);
    let agent = go_agent_image(&docker, &scratch);

    // The agent image as it is, under the storm: it spins.
    let mut unguarded = vec!["run", "--rm", "--network", "none", "--cap-add", "SYS_ADMIN"];
    unguarded.push(agent);
    unguarded.extend(STORM);
    unguarded.extend(["--wait", "2"]);
    let out = docker.run(&unguarded, T);
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "spinning", "unguarded agent: {}", describe(&out));

    let sg = spinguard_image_in_manifests();
    let images = [(sg.as_str(), image.as_str()), (AGENT_IMAGE, agent)];
    let listen = pod::manifest(&repo().join("deploy/kubernetes/spinguard-listen.yaml"));
    let listen = pod::Pod::new(&docker, &listen, &images, &scratch);
    listen.start("listen", None);
    let sock = listen.node_path("/run/spinguard/spinguard.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the listener made no socket: {}",
            describe(&listen.logs("listen"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let guarded = pod::manifest(&repo().join("deploy/kubernetes/guarded-agent.yaml"));
    let pod = pod::Pod::new(&docker, &guarded, &images, &scratch);
    pod.run_init_containers(T);
    // The manifest's agent path, with the loader's flags for its own.
    let args = pod::pod_spec(&guarded)["containers"][0]["args"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(args, GO_AGENT_PATH);
    let mut argv = vec![args.as_str()];
    argv.extend(STORM);
    argv.extend(["--wait", "20"]);
    let out = pod.run("agent", Some(&argv), T);
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "guarded agent: {}", describe(&out));
    assert!(out.status.success(), "{}", describe(&out));

    // The load reached the node's listener, in its own pod.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = listen.logs("listen");
        let text = String::from_utf8_lossy(&logs.stdout);
        if let Some(line) = text.lines().find(|l| l.contains("BPF_PROG_LOAD loaded")) {
            assert!(line.contains(" 1 attempt,"), "not first time: {line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the listener saw no load: {}",
            describe(&logs)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = listen.node_path("/var/lib/node-exporter/textfile/spinguard.prom");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = std::fs::read_to_string(&metrics).unwrap_or_default();
        if m.contains("spinguard_loads_total") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics in {}: {m}",
            metrics.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `kubectl debug` command from the README, as kubectl would run it.
struct Debug {
    /// Where the debug container goes: the node (`kubectl debug node/NAME`,
    /// a pod in the node's PID namespace) or, with `--target=CONTAINER`, an
    /// ephemeral container in that container's PID namespace.
    place: Place,
    privileged: bool,
    image: String,
    /// What follows ` -- `, as the user's shell would hand it to kubectl.
    command: String,
}

#[derive(Debug, PartialEq)]
enum Place {
    Node,
    Target(String),
}

fn readme_debug_commands() -> Vec<Debug> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    readme
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("kubectl debug "))
        .map(|l| {
            let (flags, command) = l
                .split_once(" -- ")
                .unwrap_or_else(|| panic!("no ` -- COMMAND` in: {l}"));
            let words: Vec<&str> = flags.split_whitespace().collect();
            let flag = |name: &str| {
                words
                    .iter()
                    .find_map(|w| w.strip_prefix(&format!("--{name}=")))
                    .map(str::to_string)
            };
            let place = match flag("target") {
                Some(t) => Place::Target(t),
                None if words.iter().any(|w| w.starts_with("node/")) => Place::Node,
                None => panic!("neither --target nor node/NAME in: {l}"),
            };
            Debug {
                place,
                privileged: flag("profile").as_deref() == Some("sysadmin"),
                image: flag("image").unwrap_or_else(|| panic!("no --image in: {l}")),
                command: command.to_string(),
            }
        })
        .collect()
}

/// The README's `kubectl debug` command that goes to `place` and whose
/// command runs `word`, checked against the manifests: this release's image,
/// and the sysadmin profile (diagnose and attach need its ptrace and eBPF
/// rights).
fn readme_debug(word: &str, place: Place) -> Debug {
    let c = readme_debug_commands()
        .into_iter()
        .find(|c| c.command.contains(word) && c.place == place)
        .unwrap_or_else(|| {
            panic!("no `kubectl debug … -- …{word}…` going to {place:?} in README.md")
        });
    assert!(c.privileged, "{word}: --profile=sysadmin grants ptrace");
    assert_eq!(c.image, spinguard_image_in_manifests());
    c
}

/// An agent's container spinning under the storm, unguarded, and what
/// `kubectl debug --target` adds to its pod.
struct SpinningAgent<'a> {
    docker: &'a Dockerd,
    name: String,
    image: String,
    started: Instant,
}

impl<'a> SpinningAgent<'a> {
    fn start(docker: &'a Dockerd, scratch: &Scratch) -> SpinningAgent<'a> {
        let image = dist_image(docker);
        let agent = go_agent_image(docker, scratch);
        // The loader exits once it has loaded, where a real agent would go
        // on serving; a shell keeps the container (and so its PID namespace,
        // which the ephemeral container shares) alive after it.
        let name = format!("sg-{}-agent", std::process::id());
        let cmd = format!("{GO_AGENT_PATH} {} --wait 120; sleep 120", STORM.join(" "));
        let mut run = vec!["run", "-d", "--name", &name, "--network", "none"];
        run.extend(["--cap-add", "SYS_ADMIN", "--entrypoint", "sh", agent, "-c"]);
        run.push(&cmd);
        docker.ok(&run, T);
        let a = SpinningAgent {
            docker,
            name,
            image,
            started: Instant::now(),
        };
        std::thread::sleep(Duration::from_secs(1));
        a
    }

    /// The debug container: in the node's PID namespace, or an ephemeral
    /// container in the target's (this agent's), privileged as the profile
    /// asks, the command as the user typed it. (A node debug pod also gets
    /// the node's root at /host and its network; nothing here uses them.)
    fn debug(&self, c: &Debug) -> std::process::Output {
        let pid = match c.place {
            Place::Node => "host".to_string(),
            Place::Target(_) => format!("container:{}", self.name),
        };
        let privileged = if c.privileged {
            privileged_flags()
        } else {
            Vec::new()
        };
        let mut a = vec!["run", "--rm", "--network", "none", "--pid", &pid];
        a.extend(privileged.iter().map(String::as_str));
        a.extend(["--entrypoint", "sh", &self.image, "-c", &c.command]);
        self.docker.run(&a, T)
    }

    fn logs(&self) -> std::process::Output {
        self.docker.run(&["logs", &self.name], T)
    }
}

impl Drop for SpinningAgent<'_> {
    fn drop(&mut self) {
        let _ = self
            .docker
            .run(&["rm", "-f", &self.name], Duration::from_secs(60));
    }
}

#[test]
fn kubectl_debug_on_the_node_diagnoses_the_livelock_of_a_running_agent() {
    require_privileged!();
    let _s = serial();
    let diagnose = readme_debug("spinguard diagnose", Place::Node);
    let Some(docker) = dockerd() else { return };
    let scratch = Scratch::new("k8s-diagnose");
    let agent = SpinningAgent::start(&docker, &scratch);
    let out = agent.debug(&diagnose);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("verdict: livelock"),
        "{}\nthe agent: {}",
        describe(&out),
        describe(&agent.logs())
    );
}

/// `kubectl debug --target=agent … -- spinguard diagnose`: from the
/// ephemeral container, in the agent container's PID namespace, diagnose
/// names the agent by its pid there and sees its livelock (it used to see
/// no bpf call and say `idle`).
#[test]
fn kubectl_debug_target_diagnoses_the_livelock_from_the_agents_pid_namespace() {
    require_privileged!();
    let _s = serial();
    let diagnose = readme_debug("spinguard diagnose", Place::Target("agent".into()));
    let Some(docker) = dockerd() else { return };
    let scratch = Scratch::new("k8s-diagnose-target");
    let agent = SpinningAgent::start(&docker, &scratch);
    let out = agent.debug(&diagnose);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let why = || format!("{}\nthe agent: {}", describe(&out), describe(&agent.logs()));
    assert!(text.contains("verdict: livelock"), "{}", why());
    // By its pid in the container (sh is 1 there), which is what `attach`
    // from the same place takes.
    let pid: i32 = text
        .split("watched pid ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", why()));
    assert!(
        pid > 1 && pid < 100,
        "a pid of the container's namespace: {}",
        why()
    );
    assert!(
        text.contains(&format!("spinguard attach {pid}")),
        "{}",
        why()
    );
    assert!(text.contains("tgkill from this process"), "{}", why());
}

#[test]
fn kubectl_debug_attach_rescues_a_spinning_agent_without_a_restart() {
    require_privileged!();
    let _s = serial();
    let attach = readme_debug("spinguard attach", Place::Target("agent".into()));
    let Some(docker) = dockerd() else { return };
    let scratch = Scratch::new("k8s-attach");
    let agent = SpinningAgent::start(&docker, &scratch);

    // attach ends when the agent's process does, having rescued it.
    let out = agent.debug(&attach);
    assert!(out.status.success(), "attach: {}", describe(&out));
    let logs = agent.logs();
    let l = LoaderLine::parse(&String::from_utf8_lossy(&logs.stdout));
    assert_eq!(l.result, "loaded", "not rescued: {}", describe(&logs));
    // The process that had been spinning since the start, not a new one: it
    // loaded after longer than the rescue alone takes.
    let ms = l.get("ms").unwrap_or(0);
    assert!(
        ms >= 1000 && ms <= agent.started.elapsed().as_millis() as u64,
        "loaded after {ms} ms: {}",
        l.line
    );
    // And the container was never restarted: still its first run.
    let state = docker.ok(
        &[
            "inspect",
            "-f",
            "{{.State.Running}} {{.RestartCount}}",
            &agent.name,
        ],
        T,
    );
    assert_eq!(state, "true 0");
}
