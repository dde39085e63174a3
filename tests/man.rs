//! The man pages `spinguard man --dir` writes: one per visible subcommand and
//! spinguard(1), each with the version, ENVIRONMENT, EXIT STATUS and SEE ALSO;
//! every spinguard page they name exists; groff reads them without a warning.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(60);

/// roff source as plain text: `\-` is `-`, font changes are dropped.
fn plain(roff: &str) -> String {
    roff.replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
}

/// The `spinguard(1)` and `spinguard-X(1)` page names `text` refers to.
fn references(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("spinguard") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(tail.len());
        if tail[end..].starts_with("(1)") {
            refs.insert(format!("{}.1", &tail[..end]));
        }
        rest = &tail[end..];
    }
    refs
}

fn section<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text
        .find(&format!(".SH \"{name}\""))
        .or_else(|| text.find(&format!(".SH {name}\n")))?;
    let body = &text[start..];
    let body = &body[body.find('\n')? + 1..];
    Some(&body[..body.find("\n.SH ").map_or(body.len(), |e| e + 1)])
}

#[test]
fn every_page_has_version_environment_exit_status_and_see_also() {
    let scratch = Scratch::new("man");
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["man", "--dir"])
            .arg(scratch.dir()),
        T,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let version = String::from_utf8_lossy(
        &run_timeout(Command::new(spinguard_bin()).arg("--version"), T).stdout,
    )
    .trim()
    .to_string();
    assert!(version.starts_with("spinguard 0."), "{version}");

    let subs = subcommands();
    assert!(subs.len() >= 8, "{subs:?}");
    let mut want: BTreeSet<String> = subs.iter().map(|s| format!("spinguard-{s}.1")).collect();
    want.insert("spinguard.1".into());
    let written: BTreeSet<String> = std::fs::read_dir(scratch.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, want, "one page per subcommand, and spinguard.1");

    for name in &written {
        let roff = std::fs::read_to_string(scratch.path(name)).unwrap();
        let text = plain(&roff);
        let th = text
            .lines()
            .find(|l| l.starts_with(".TH "))
            .unwrap_or_default();
        assert!(
            th.contains(&version),
            "{name}: title without the version: {th}"
        );
        for s in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "ENVIRONMENT",
            "EXIT STATUS",
            "SEE ALSO",
            "VERSION",
        ] {
            assert!(section(&roff, s).is_some(), "{name}: no {s} section");
        }
        assert!(
            section(&text, "VERSION").unwrap().contains(&version),
            "{name}: VERSION"
        );
        // Every page (spinguard(1) aside) points back at spinguard(1).
        let see_also = references(section(&text, "SEE ALSO").unwrap());
        if name != "spinguard.1" {
            assert!(see_also.contains("spinguard.1"), "{name}: {see_also:?}");
        }
        // No dangling reference anywhere on the page (no spinguard-help(1)).
        for r in references(&text) {
            assert!(
                written.contains(&r),
                "{name} names {r}, which is not generated"
            );
        }
        // The EXIT STATUS is the command's own, not a stand-in.
        let exit = section(&text, "EXIT STATUS").unwrap();
        assert!(
            !exit.contains("0 on success, 1 on failure"),
            "{name}: a stand-in: {exit}"
        );
        assert!(
            !roff.contains(".SH EXTRA"),
            "{name}: clap_mangen's EXTRA heading"
        );
    }

    let top = plain(&std::fs::read_to_string(scratch.path("spinguard.1")).unwrap());
    let env = section(&top, "ENVIRONMENT").unwrap();
    for v in [
        "SPINGUARD_SIGNALS",
        "SPINGUARD_MODE",
        "SPINGUARD_LOG",
        "SPINGUARD_EVENTS",
        "SPINGUARD_SHIM",
        "RUST_LOG",
        "JOURNAL_STREAM",
    ] {
        assert!(env.contains(v), "spinguard(1) ENVIRONMENT lacks {v}");
    }
    assert!(
        env.contains("empty variable is the same as an unset one"),
        "{env}"
    );
    let exit = section(&top, "EXIT STATUS").unwrap();
    assert!(exit.contains("closed standard output"), "{exit}");
    let run = plain(&std::fs::read_to_string(scratch.path("spinguard-run.1")).unwrap());
    assert!(section(&run, "EXIT STATUS").unwrap().contains("128+N"));
    let diagnose = plain(&std::fs::read_to_string(scratch.path("spinguard-diagnose.1")).unwrap());
    assert!(section(&diagnose, "EXIT STATUS")
        .unwrap()
        .contains("4 livelock"));

    // `spinguard man` prints spinguard.1 exactly.
    let out = run_timeout(Command::new(spinguard_bin()).arg("man"), T);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(scratch.path("spinguard.1")).unwrap()
    );

    // groff (Debian's groff-base, which man-db needs) reads each page
    // without a warning: no stray characters, no broken requests.
    for name in &written {
        let out = run_timeout(
            Command::new("groff")
                .args(["-ww", "-z", "-man"])
                .arg(scratch.path(name)),
            T,
        );
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff on {name}: {}",
            describe(&out)
        );
    }
}
