//! Runs the containers of a Kubernetes manifest's pod template the way a
//! kubelet would, on the private docker daemon (no cluster here): init
//! containers to completion first, then the others; `command` replaces the
//! image's ENTRYPOINT and `args` its CMD; emptyDir and hostPath volumes are
//! directories under the test's scratch dir (hostPath under `node/`, so two
//! pods share them as on one node); hostPID, privileged, capabilities,
//! readOnlyRootFilesystem and allowPrivilegeEscalation map to docker's flags.
//!
//! A field this does not know panics rather than being ignored: a manifest
//! that changes beyond what the test runs must change the test too.

use super::{describe, Dockerd, Scratch};
use serde_yaml::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// Container fields the emulation understands (`resources` changes nothing
/// the tests look at).
const CONTAINER_FIELDS: [&str; 9] = [
    "name",
    "image",
    "command",
    "args",
    "env",
    "securityContext",
    "volumeMounts",
    "resources",
    "imagePullPolicy",
];
/// Pod fields it understands (`tolerations` only matter to the scheduler).
const POD_FIELDS: [&str; 5] = [
    "initContainers",
    "containers",
    "volumes",
    "hostPID",
    "tolerations",
];

/// The one document of a manifest file.
pub fn manifest(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pod spec of a Pod, or the pod template's of a DaemonSet/Deployment.
pub fn pod_spec(m: &Value) -> &Value {
    match m["kind"].as_str() {
        Some("Pod") => &m["spec"],
        Some(_) => &m["spec"]["template"]["spec"],
        None => panic!("not a Kubernetes object: {m:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// One pod of a manifest, run on `docker`.
pub struct Pod<'a> {
    docker: &'a Dockerd,
    spec: Value,
    /// Manifest image -> local image.
    images: HashMap<String, String>,
    /// Where this pod's emptyDirs live.
    dir: PathBuf,
    /// The node's filesystem for hostPath volumes (shared by pods).
    node: PathBuf,
    /// docker container names, prefixed to be unique to this test process.
    prefix: String,
}

impl<'a> Pod<'a> {
    pub fn new(
        docker: &'a Dockerd,
        manifest: &Value,
        images: &[(&str, &str)],
        scratch: &Scratch,
    ) -> Pod<'a> {
        let spec = pod_spec(manifest).clone();
        for k in spec.as_mapping().expect("a pod spec").keys() {
            let k = k.as_str().unwrap();
            assert!(POD_FIELDS.contains(&k), "pod field {k} is not emulated");
        }
        let name = manifest["metadata"]["name"].as_str().expect("a name");
        let dir = scratch.path(&format!("pod-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Pod {
            docker,
            spec,
            images: images
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            dir,
            node: scratch.path("node"),
            prefix: format!("sg-{}-{name}", std::process::id()),
        }
    }

    /// The docker container name of the pod's container `name`.
    pub fn container_name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Where a hostPath volume's `path` is on the emulated node.
    pub fn node_path(&self, path: &str) -> PathBuf {
        self.node.join(path.trim_start_matches('/'))
    }

    fn container(&self, name: &str) -> &Value {
        self.spec["initContainers"]
            .as_sequence()
            .into_iter()
            .chain(self.spec["containers"].as_sequence())
            .flatten()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container {name} in the pod"))
    }

    fn volume_dir(&self, volume: &str) -> PathBuf {
        let v = self.spec["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"].as_str() == Some(volume))
            .unwrap_or_else(|| panic!("no volume {volume}"));
        let dir = if v.get("emptyDir").is_some() {
            self.dir.join(volume)
        } else if let Some(p) = v["hostPath"]["path"].as_str() {
            self.node_path(p)
        } else {
            panic!("volume {volume}: only emptyDir and hostPath are emulated");
        };
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `docker run` arguments for container `name`; `args` replaces the
    /// manifest's args when given (the tests put a real loader's there).
    pub fn run_args(&self, name: &str, detach: bool, args: Option<&[&str]>) -> Vec<String> {
        let c = self.container(name);
        for k in c.as_mapping().unwrap().keys() {
            let k = k.as_str().unwrap();
            assert!(
                CONTAINER_FIELDS.contains(&k),
                "container field {k} is not emulated"
            );
        }
        let mut a: Vec<String> = vec!["run".into(), "--network".into(), "none".into()];
        a.push(if detach { "-d" } else { "--rm" }.into());
        a.extend(["--name".into(), self.container_name(name)]);
        if self.spec["hostPID"].as_bool() == Some(true) {
            a.extend(["--pid".into(), "host".into()]);
        }
        let sc = &c["securityContext"];
        if sc["privileged"].as_bool() == Some(true) {
            a.extend(super::privileged_flags());
        }
        if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
            a.push("--read-only".into());
        }
        if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
            a.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        for cap in strings(&sc["capabilities"]["drop"]) {
            a.extend(["--cap-drop".into(), cap]);
        }
        for cap in strings(&sc["capabilities"]["add"]) {
            // Docker 20.10 predates CAP_BPF and CAP_PERFMON (Linux 5.8);
            // SYS_ADMIN grants what they do.
            let cap = match cap.as_str() {
                "BPF" | "PERFMON" => "SYS_ADMIN".to_string(),
                _ => cap,
            };
            a.extend(["--cap-add".into(), cap]);
        }
        for e in c["env"].as_sequence().into_iter().flatten() {
            let (k, v) = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
            a.extend(["-e".into(), format!("{k}={v}")]);
        }
        for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
            let dir = self.volume_dir(m["name"].as_str().unwrap());
            let ro = if m["readOnly"].as_bool() == Some(true) {
                ":ro"
            } else {
                ""
            };
            a.extend([
                "-v".into(),
                format!("{}:{}{ro}", dir.display(), m["mountPath"].as_str().unwrap()),
            ]);
        }
        let command = strings(&c["command"]);
        if let Some((entry, rest)) = command.split_first() {
            a.extend(["--entrypoint".into(), entry.clone()]);
            let image = c["image"].as_str().unwrap();
            a.push(self.image(image));
            a.extend(rest.iter().cloned());
        } else {
            a.push(self.image(c["image"].as_str().unwrap()));
        }
        match args {
            Some(args) => a.extend(args.iter().map(|s| s.to_string())),
            None => a.extend(strings(&c["args"])),
        }
        a
    }

    fn image(&self, manifest_image: &str) -> String {
        self.images
            .get(manifest_image)
            .unwrap_or_else(|| panic!("no local image stands for {manifest_image}"))
            .clone()
    }

    /// Runs every init container to completion, in order; each must exit 0.
    pub fn run_init_containers(&self, timeout: Duration) {
        for c in self.spec["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let name = c["name"].as_str().unwrap();
            let out = self.docker_run(name, false, None, timeout);
            assert!(
                out.status.success(),
                "init container {name}: {}",
                describe(&out)
            );
        }
    }

    /// Runs container `name` in the foreground (removed afterwards).
    pub fn run(&self, name: &str, args: Option<&[&str]>, timeout: Duration) -> Output {
        self.docker_run(name, false, args, timeout)
    }

    /// Starts container `name` in the background; `logs` and `wait` follow it.
    pub fn start(&self, name: &str, args: Option<&[&str]>) {
        let out = self.docker_run(name, true, args, Duration::from_secs(120));
        assert!(out.status.success(), "start {name}: {}", describe(&out));
    }

    fn docker_run(&self, name: &str, detach: bool, args: Option<&[&str]>, t: Duration) -> Output {
        let a = self.run_args(name, detach, args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        self.docker.run(&a, t)
    }

    /// What a started container printed so far (stdout, stderr).
    pub fn logs(&self, name: &str) -> Output {
        self.docker.run(
            &["logs", &self.container_name(name)],
            Duration::from_secs(60),
        )
    }

    /// Waits for a started container to exit; its exit code.
    pub fn wait(&self, name: &str, timeout: Duration) -> i32 {
        let code = self
            .docker
            .ok(&["wait", &self.container_name(name)], timeout);
        code.parse()
            .unwrap_or_else(|_| panic!("docker wait printed {code}"))
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        // Started containers; the daemon's own shutdown would also stop them.
        for c in ["initContainers", "containers"]
            .iter()
            .flat_map(|k| self.spec[*k].as_sequence().into_iter().flatten())
        {
            let name = self.container_name(c["name"].as_str().unwrap());
            let _ = self
                .docker
                .run(&["rm", "-f", &name], Duration::from_secs(60));
        }
    }
}
