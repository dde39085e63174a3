//! The CLI's plumbing: `shim-path`, `--help`, `--version`, and the loader that
//! every other test relies on reproducing the bug.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn shim_path_honours_override_and_reports_where_it_looked() {
    let shim = shim_path();
    let out = run_timeout(
        Command::new(spinguard_bin())
            .arg("shim-path")
            .env("SPINGUARD_SHIM", &shim),
        T,
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        std::fs::canonicalize(&shim).unwrap().to_string_lossy()
    );

    let out = run_timeout(
        Command::new(spinguard_bin())
            .arg("shim-path")
            .env("SPINGUARD_SHIM", "/nonexistent/libspinguard_shim.so"),
        T,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("/nonexistent/libspinguard_shim.so"), "{err}");
}

#[test]
fn shim_path_finds_the_shim_next_to_the_binary_then_in_lib_spinguard() {
    let shim = shim_path();
    let scratch = Scratch::new("shim-path");
    let dir = scratch.dir();
    // next to the binary
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::copy(spinguard_bin(), dir.join("a/spinguard")).unwrap();
    std::fs::copy(&shim, dir.join("a/libspinguard_shim.so")).unwrap();
    // PREFIX/bin + PREFIX/lib/spinguard
    std::fs::create_dir_all(dir.join("p/bin")).unwrap();
    std::fs::create_dir_all(dir.join("p/lib/spinguard")).unwrap();
    std::fs::copy(spinguard_bin(), dir.join("p/bin/spinguard")).unwrap();
    std::fs::copy(&shim, dir.join("p/lib/spinguard/libspinguard_shim.so")).unwrap();
    // nowhere
    std::fs::create_dir_all(dir.join("n")).unwrap();
    std::fs::copy(spinguard_bin(), dir.join("n/spinguard")).unwrap();

    for (bin, want) in [
        ("a/spinguard", Some("a/libspinguard_shim.so")),
        (
            "p/bin/spinguard",
            Some("p/lib/spinguard/libspinguard_shim.so"),
        ),
        ("n/spinguard", None),
    ] {
        let out = run_timeout(
            Command::new(dir.join(bin))
                .arg("shim-path")
                .env_remove("SPINGUARD_SHIM"),
            T,
        );
        match want {
            Some(w) => {
                assert!(out.status.success(), "{bin}: {}", describe(&out));
                let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
                assert_eq!(got, dir.join(w).canonicalize().unwrap().to_string_lossy());
            }
            None => {
                assert_eq!(out.status.code(), Some(1), "{bin}: {}", describe(&out));
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("n/libspinguard_shim.so")
                        && err.contains("lib/spinguard/libspinguard_shim.so"),
                    "names both places: {err}"
                );
            }
        }
    }
}

#[test]
fn version_and_help() {
    let out = run_timeout(Command::new(spinguard_bin()).arg("--version"), T);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("spinguard "));
    let out = run_timeout(Command::new(spinguard_bin()).arg("--help"), T);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("shim-path") && help.contains("EAGAIN"),
        "{help}"
    );
    let out = run_timeout(Command::new(spinguard_bin()).arg("no-such-command"), T);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// The premise of everything else: the bug is real here. Unguarded, a 1 kHz
/// SIGPROF storm keeps the 120 ms program from ever loading.
#[test]
fn rust_loader_spins_under_a_storm_and_loads_without_one() {
    require_privileged!();
    let _s = serial();
    let loader = example_bin("rust-loader");
    let out = run_timeout(Command::new(&loader).args(["--iters", "100000"]), T);
    let calm = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(calm.result, "loaded", "{}", describe(&out));
    assert_eq!(calm.get("attempts"), Some(1), "{}", calm.line);

    for storm in ["tgkill", "timer"] {
        let out = run_timeout(
            Command::new(&loader).args(["--storm-hz", "1000", "--storm", storm, "--wait", "1.5"]),
            T,
        );
        let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(2), "{storm}: {}", describe(&out));
        assert_eq!(l.result, "spinning", "{storm}: {}", l.line);
        assert!(
            l.get("attempts").unwrap() > 100 && l.get("signals").unwrap() > 100,
            "{storm}: expected hundreds of EAGAIN attempts and signals, got {}",
            l.line
        );
    }

    let out = run_timeout(
        Command::new(&loader).args(["--storm-hz", "1000", "--max-attempts", "2"]),
        T,
    );
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(
        (l.result.as_str(), l.str("errno")),
        ("failed", Some("EAGAIN")),
        "{}",
        l.line
    );
}

#[test]
fn rust_loader_rejects_bad_flags() {
    let loader = example_bin("rust-loader");
    let out = run_timeout(Command::new(&loader).args(["--threads", "0"]), T);
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
    let out = run_timeout(Command::new(&loader).args(["--storm-signal", "SIGNOPE"]), T);
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
}

/// -v and -q are global: every subcommand lists them, takes them before or
/// after its name, and refuses the two together as a usage error.
#[test]
fn verbosity_is_global() {
    let subcommands = subcommands();
    assert!(subcommands.len() >= 8, "{subcommands:?}");
    for sub in &subcommands {
        let out = run_timeout(Command::new(spinguard_bin()).args([sub, "--help"]), T);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("-v, --verbose") && help.contains("-q, --quiet"),
            "{sub} --help: {help}"
        );
    }
    let shim = shim_path();
    for args in [
        &["-q", "shim-path"][..],
        &["shim-path", "-q"],
        &["-vv", "shim-path"],
    ] {
        let out = run_timeout(
            Command::new(spinguard_bin())
                .args(args)
                .env("SPINGUARD_SHIM", &shim),
            T,
        );
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
    }
    for args in [
        &["-v", "-q", "shim-path"][..],
        &["-v", "shim-path", "-q"],
        &["diagnose", "-q", "-v", "1"],
    ] {
        let out = run_timeout(Command::new(spinguard_bin()).args(args), T);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
}

/// A copy of sleep(1) named `name`, so /proc/PID/comm is `name`.
fn named_sleeper(scratch: &Scratch, name: &str) -> GroupGuard {
    let bin = scratch.path(name);
    if !bin.exists() {
        std::fs::copy("/bin/sleep", &bin).unwrap();
    }
    let g = spawn_guarded(Command::new(&bin).arg("60"));
    let deadline = std::time::Instant::now() + T;
    // comm changes at exec; wait for it.
    while std::fs::read_to_string(format!("/proc/{}/comm", g.pid())).unwrap_or_default()
        != format!("{name}\n")
    {
        assert!(std::time::Instant::now() < deadline, "{name} never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    g
}

/// Where a PID is taken: positional, -p/--pid, or --comm NAME; exactly one.
/// A name that matches no process or several is a one-line error listing
/// what it found, exit 1 (as for a PID that does not exist).
#[test]
fn a_process_by_pid_flag_or_by_name() {
    let scratch = Scratch::new("comm");
    let name = format!("sgc-{}", std::process::id());
    let bin = spinguard_bin();
    for sub in ["attach", "diagnose"] {
        for args in [&[sub][..], &[sub, "1", "-p", "1"], &[sub, "--comm", ""]] {
            let out = run_timeout(Command::new(&bin).args(args), T);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        }
        let out = run_timeout(Command::new(&bin).args([sub, "--comm", &name]), T);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("spinguard: error: no process named {name:?}\n")
        );
        // -p means the same as the positional PID: no such process, exit 1.
        let out = run_timeout(Command::new(&bin).args([sub, "-p", "2147483647"]), T);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("2147483647"),
            "{}",
            describe(&out)
        );
    }

    let a = named_sleeper(&scratch, &name);
    let b = named_sleeper(&scratch, &name);
    let out = run_timeout(Command::new(&bin).args(["attach", "--comm", &name]), T);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("2 processes named {name:?}"))
            && err.contains(&a.pid().to_string())
            && err.contains(&b.pid().to_string())
            && err.contains("--pid"),
        "{err}"
    );
    // Part of the name: not a match, but named as similar.
    let out = run_timeout(Command::new(&bin).args(["diagnose", "--comm", "sgc-"]), T);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("similar: {name} ({})", a.pid())),
        "{err}"
    );
    drop(b);

    require_privileged!();
    let _s = serial();
    for args in [
        &["diagnose", "--json", "--for", "0.2", "--comm", &name][..],
        &[
            "diagnose",
            "--json",
            "--for",
            "0.2",
            "-p",
            &a.pid().to_string(),
        ],
    ] {
        let out = run_timeout(Command::new(&bin).args(args), T);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["pid"], a.pid(), "{args:?}: {v}");
    }
}

/// Every log line says its level: `spinguard: error: …` as text, an
/// sd-daemon `<N>` prefix when stderr is the journal (JOURNAL_STREAM names
/// stderr's device and inode), one JSON object per line with --log-format json.
#[test]
fn log_lines_carry_their_level_as_text_journal_or_json() {
    use std::os::unix::fs::MetadataExt;
    let scratch = Scratch::new("log-format");
    let stderr_file = scratch.path("stderr");
    let fails = ["attach", "2147483647"];
    let run_with = |extra: &[&str], args: &[&str], journal: Option<String>| {
        let f = std::fs::File::create(&stderr_file).unwrap();
        let mut cmd = Command::new(spinguard_bin());
        cmd.args(extra).args(args).stderr(f);
        match &journal {
            Some(j) => cmd.env("JOURNAL_STREAM", j),
            None => cmd.env_remove("JOURNAL_STREAM"),
        };
        let g = spawn_guarded(&mut cmd);
        let out = wait_timeout(g, T, "spinguard");
        (
            out.status.code(),
            std::fs::read_to_string(&stderr_file).unwrap(),
        )
    };
    let msg = "no process with pid 2147483647";

    let (code, err) = run_with(&[], &fails, None);
    assert_eq!(
        (code, err.as_str()),
        (Some(1), &*format!("spinguard: error: {msg}\n"))
    );

    // JOURNAL_STREAM matching the file stderr is: journal priorities. The
    // variable is read at exec, the file is created (truncated) before it,
    // so its inode is known in advance.
    std::fs::File::create(&stderr_file).unwrap();
    let m = std::fs::metadata(&stderr_file).unwrap();
    let here = format!("{}:{}", m.dev(), m.ino());
    let (code, err) = run_with(&[], &fails, Some(here.clone()));
    assert_eq!(
        (code, err.as_str()),
        (Some(1), &*format!("<3>spinguard: {msg}\n"))
    );
    // Inherited by a program whose stderr went elsewhere: not the journal.
    let elsewhere = format!("{}:{}", m.dev(), m.ino() + 1);
    let (_, err) = run_with(&[], &fails, Some(elsewhere));
    assert_eq!(err, format!("spinguard: error: {msg}\n"));
    let (_, err) = run_with(&[], &fails, Some("nonsense".into()));
    assert_eq!(err, format!("spinguard: error: {msg}\n"));
    // Asked for text, text it is.
    let (_, err) = run_with(&["--log-format", "text"], &fails, Some(here));
    assert_eq!(err, format!("spinguard: error: {msg}\n"));

    let (code, err) = run_with(&["--log-format", "json"], &fails, None);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&err).unwrap();
    assert_eq!(
        (v["level"].as_str(), v["msg"].as_str()),
        (Some("error"), Some(msg))
    );
    assert!(v["ts"].as_u64().is_some(), "{v}");

    // RUST_LOG still filters (env_logger without its regex feature): module
    // paths and levels.
    shim_path();
    for (filter, shown) in [("spinguard=debug", true), ("spinguard=info", false)] {
        let out = run_timeout(
            Command::new(spinguard_bin())
                .args(["run", "--mode", "preload", "--", "true"])
                .env("RUST_LOG", filter)
                .env_remove("JOURNAL_STREAM"),
            T,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.lines()
                .any(|l| l.starts_with("spinguard: debug: LD_PRELOAD=")),
            shown,
            "RUST_LOG={filter}: {err}"
        );
    }

    require_privileged!();
    // Info lines (-v) and warnings alike, each a JSON object.
    let (code, err) = run_with(
        &["--log-format=json"],
        &["run", "-v", "--mode", "ptrace", "--", "true"],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|v| v["level"] == "info"
            && v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("guarded bpf calls"))),
        "{err}"
    );
}

/// The environment, read one way everywhere: an empty variable is an unset
/// one (SPINGUARD_SHIM, SPINGUARD_SIGNALS, SPINGUARD_LOG alike), and a value
/// that is not UTF-8 is refused like any bad value, never quietly the default.
#[test]
fn empty_variables_are_unset_and_non_utf8_is_an_error() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    shim_path();
    // Empty SPINGUARD_SHIM: the usual places (next to the binary here).
    let out = run_timeout(
        Command::new(spinguard_bin())
            .arg("shim-path")
            .env("SPINGUARD_SHIM", ""),
        T,
    );
    assert!(out.status.success(), "{}", describe(&out));

    let not_utf8 = OsStr::from_bytes(b"SIGPROF\xff");
    for args in [
        &["run", "--", "true"][..],
        &["run", "--mode", "preload", "--", "true"],
        &["attach", "--for", "1", "1"],
    ] {
        let out = run_timeout(
            Command::new(spinguard_bin())
                .args(args)
                .env("SPINGUARD_SIGNALS", not_utf8),
            T,
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "spinguard: error: invalid SPINGUARD_SIGNALS: \"SIGPROF\\xFF\" is not valid UTF-8\n"
        );
    }

    // Empty SPINGUARD_SIGNALS: the default guard set reaches the program.
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "--mode", "preload", "--", "sh", "-c"])
            .arg("echo \"$SPINGUARD_SIGNALS\"")
            .env("SPINGUARD_SIGNALS", ""),
        T,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "SIGALRM,SIGVTALRM,SIGPROF\n",
        "{}",
        describe(&out)
    );
    // Empty SPINGUARD_LOG says nothing: -v still asks the shim for its exec
    // lines and its summary of guarded calls.
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "-v", "--mode", "preload", "--", "sh", "-c"])
            .arg("echo \"$SPINGUARD_LOG\"")
            .env("SPINGUARD_LOG", ""),
        T,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "exec,calls\n",
        "{}",
        describe(&out)
    );
}
