//! `scripts/install` lays out a prefix where `spinguard shim-path` finds the
//! shim, with man pages and completions generated from the CLI itself.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

#[test]
fn install_lays_out_a_prefix_that_finds_its_shim() {
    shim_path(); // builds the shim next to the binary in target/<profile>
    let prefix = std::env::temp_dir().join(format!("spinguard-prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    let from = target_dir();
    let out = run_timeout(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install"))
            .arg("--prefix")
            .arg(&prefix)
            .args(["--no-build", "--from"])
            .arg(&from),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", describe(&out));
    for f in [
        "bin/spinguard",
        "lib/spinguard/libspinguard_shim.so",
        "share/man/man1/spinguard.1",
        "share/man/man1/spinguard-demo.1",
        "share/bash-completion/completions/spinguard",
        "share/zsh/site-functions/_spinguard",
        "share/fish/vendor_completions.d/spinguard.fish",
    ] {
        let p = prefix.join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} missing or empty", p.display());
    }
    let man = std::fs::read_to_string(prefix.join("share/man/man1/spinguard.1")).unwrap();
    assert!(
        man.contains(".TH spinguard 1"),
        "not a man page: {man:.200}"
    );
    let bash = std::fs::read_to_string(prefix.join("share/bash-completion/completions/spinguard"))
        .unwrap();
    assert!(
        bash.contains("shim-path") && bash.contains("demo"),
        "{bash:.300}"
    );

    let out = run_timeout(
        Command::new(prefix.join("bin/spinguard"))
            .arg("shim-path")
            .env_remove("SPINGUARD_SHIM"),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        prefix
            .join("lib/spinguard/libspinguard_shim.so")
            .to_string_lossy()
    );
    let _ = std::fs::remove_dir_all(&prefix);
}

#[test]
fn install_rejects_unknown_arguments() {
    let out = run_timeout(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install")).arg("--prefx"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prefx"));
}
