//! The container image (deploy/Dockerfile), built offline by
//! `scripts/dist --image` and run by a real container runtime: Debian's
//! docker.io (dockerd 20.10, containerd, runc), a private daemon per test
//! (tests/support/docker.rs). The image's entrypoint, `spinguard run --`,
//! guards a dynamically linked loader with the shim from /usr/lib/spinguard
//! and the static Go loader with ptrace, inside the container.

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(120);

/// What an eBPF agent's container gets to load programs. Docker 20.10 knows
/// no CAP_BPF or CAP_PERFMON; SYS_ADMIN holds what they grant.
const AGENT_CAPS: [&str; 2] = ["--cap-add", "SYS_ADMIN"];

/// `docker run --rm --network none` with the agent's capabilities and the
/// two loaders mounted read-only at /opt.
fn run_args<'a>(volumes: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "--rm", "--network", "none"];
    a.extend(AGENT_CAPS);
    for v in volumes {
        a.extend(["-v", v.as_str()]);
    }
    a.extend(rest);
    a
}

fn loader_volumes() -> Vec<String> {
    let d = dist();
    vec![
        format!("{}:/opt/rust-loader:ro", d.rust_loader.display()),
        format!("{}:/opt/go-loader:ro", go_loader().display()),
    ]
}

#[test]
fn the_image_is_built_offline_with_the_shim_in_usr_lib_spinguard() {
    require_privileged!();
    let _s = serial();
    let Some(docker) = dockerd() else { return };

    // Offline: every stage starts FROM scratch or from an earlier stage, so
    // nothing is pulled; scripts/dist builds with --network none.
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile"))
            .unwrap();
    let mut stages = Vec::new();
    for line in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words[1] == "scratch" || stages.contains(&words[1]),
            "a stage the build would have to pull: {line}"
        );
        if let [_, _, as_, name] = words[..] {
            assert!(as_.eq_ignore_ascii_case("as"), "{line}");
            stages.push(name);
        }
    }

    let image = dist_image(&docker);
    let version = &dist().version;
    let entry = docker.ok(
        &[
            "image",
            "inspect",
            "-f",
            "{{json .Config.Entrypoint}}",
            &image,
        ],
        T,
    );
    assert_eq!(entry, r#"["spinguard","run","--"]"#);

    // One command in the image, in place of its entrypoint.
    let exec = |argv: &[&str]| {
        let mut a = vec!["run", "--rm", "--network", "none", "--entrypoint", argv[0]];
        a.push(&image);
        a.extend(&argv[1..]);
        docker.ok(&a, T)
    };
    assert_eq!(
        exec(&["spinguard", "shim-path"]),
        "/usr/lib/spinguard/libspinguard_shim.so"
    );
    assert_eq!(
        exec(&["spinguard", "--version"]),
        format!("spinguard {version}")
    );
    let libc = exec(&["ldd", "--version"]);
    assert!(libc.contains("GLIBC 2.31"), "not the bullseye base: {libc}");
}

#[test]
fn the_entrypoint_guards_a_dynamic_and_a_static_go_loader() {
    require_privileged!();
    let _s = serial();
    let Some(docker) = dockerd() else { return };
    let image = dist_image(&docker);
    let vols = loader_volumes();
    let storm = ["--storm-hz", "1000"];

    // In this container, unguarded, the storm keeps both from loading.
    for loader in ["/opt/rust-loader", "/opt/go-loader"] {
        let mut rest = vec!["--entrypoint", loader, image.as_str()];
        rest.extend(storm);
        rest.extend(["--wait", "2"]);
        let out = docker.run(&run_args(&vols, &rest), T);
        let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(
            l.result,
            "spinning",
            "{loader} unguarded: {}",
            describe(&out)
        );
    }

    // Through the image's entrypoint (`spinguard run --`), both load.
    for (loader, mechanism) in [
        ("/opt/rust-loader", "preload"),
        ("/opt/go-loader", "ptrace"),
    ] {
        let mut rest = vec!["-e", "RUST_LOG=info", image.as_str(), loader];
        rest.extend(storm);
        rest.extend(["--wait", "20"]);
        let out = docker.run(&run_args(&vols, &rest), T);
        let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(l.result, "loaded", "{loader}: {}", describe(&out));
        if loader.ends_with("rust-loader") {
            assert_eq!(l.get("attempts"), Some(1), "{}", describe(&out));
        }
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("{mechanism} mode")),
            "{loader} should be guarded by {mechanism}: {}",
            describe(&out)
        );
        assert!(out.status.success(), "{}", describe(&out));
    }

    // Behind a shell, as an entrypoint script starts an agent: the guard
    // follows the script's exec of the static Go loader.
    let script = format!("exec /opt/go-loader {} --wait 20", storm.join(" "));
    let out = docker.run(&run_args(&vols, &[&image, "sh", "-c", &script]), T);
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "behind sh -c: {}", describe(&out));

    // With the fallbacks for kernels before 5.3 forced (tests/dist.rs shows
    // that forced, the supervisor makes neither call they replace).
    let mut rest = vec![
        "-e",
        "SPINGUARD_FORCE_FALLBACK=all",
        image.as_str(),
        "/opt/go-loader",
    ];
    rest.extend(storm);
    rest.extend(["--wait", "20"]);
    let out = docker.run(&run_args(&vols, &rest), T);
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "fallbacks forced: {}", describe(&out));
}

/// The README's Dockerfile that puts spinguard from this image in front of
/// one's own agent (the ```dockerfile block with `COPY --from=`), to be
/// built on the stand-in Go agent's image.
fn readme_dockerfile() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    readme
        .split("```dockerfile\n")
        .skip(1)
        .map(|b| &b[..b.find("```").expect("the block ends")])
        .find(|b| b.contains("COPY --from="))
        .expect("a ```dockerfile block with COPY --from= in README.md")
        .to_string()
}

#[test]
fn the_readme_recipe_puts_spinguard_in_front_of_an_agent_image() {
    require_privileged!();
    let _s = serial();
    let recipe = readme_dockerfile();
    let version = &dist().version;
    let named = format!("spinguard:{version}");
    assert!(
        recipe.contains(&named) && recipe.contains("FROM my-ebpf-agent:1.0"),
        "the recipe should copy from this release's image onto my-ebpf-agent:1.0:\n{recipe}"
    );
    let Some(docker) = dockerd() else { return };
    let scratch = Scratch::new("image-recipe");
    let image = dist_image(&docker);
    let agent = go_agent_image(&docker, &scratch);
    let ctx = scratch.path("recipe");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        recipe
            .replace("FROM my-ebpf-agent:1.0", &format!("FROM {agent}"))
            .replace(&named, &image),
    )
    .unwrap();
    let tag = "spinguard-test/guarded-agent:1";
    docker.build(&ctx, tag);

    let out = docker.run(
        &run_args(&[], &[tag, "--storm-hz", "1000", "--wait", "20"]),
        T,
    );
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "{}", describe(&out));
    assert!(out.status.success(), "{}", describe(&out));
}
