//! `spinguard man`: the man pages, generated from the CLI definition itself
//! (so they cannot drift from `--help`), with what clap_mangen leaves out:
//! ENVIRONMENT, EXIT STATUS (the "Exit status:" paragraph of each `--help`),
//! SEE ALSO naming only pages that exist, and the version on every page.

use anyhow::Result;
use clap::Args;
use clap_mangen::roff::{bold, roman, Inline, Roff};
use clap_mangen::Man;
use spinguard_common::env;

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when the pages were written; 1 when they could not be \
(a full disk, a directory that cannot be created)."
)]
pub struct ManArgs {
    /// Write spinguard.1 and one spinguard-SUBCOMMAND.1 per subcommand into DIR
    /// instead of printing spinguard.1
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

/// Prints spinguard(1) as roff, or writes every page into `--dir`.
pub fn man(args: ManArgs, cli: clap::Command) -> Result<i32> {
    let pages = pages(cli);
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (name, text) in &pages {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            }
        }
        None => spinguard::output::print(&pages[0].1)?,
    }
    Ok(0)
}

/// Every page as (file name, roff): spinguard.1 first, then one per visible
/// subcommand. `help` has no page (clap's `help` subcommand is left out of
/// the definition the pages are made from), nor has the hidden `__load`.
pub fn pages(cli: clap::Command) -> Vec<(String, String)> {
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let version = cli.get_version().unwrap_or_default().to_string();
    let subs: Vec<clap::Command> = cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let names: Vec<String> = subs.iter().map(|s| s.get_name().to_string()).collect();
    let mut out = vec![(
        "spinguard.1".to_string(),
        page(&cli, None, &version, &names),
    )];
    for sub in &subs {
        out.push((
            format!("spinguard-{}.1", sub.get_name()),
            page(sub, Some(sub.get_name()), &version, &names),
        ));
    }
    out
}

/// One page. `sub`: the subcommand's name, None for spinguard(1).
fn page(cmd: &clap::Command, sub: Option<&str>, version: &str, subs: &[String]) -> String {
    let source = format!("spinguard {version}");
    let man = Man::new(cmd.clone())
        .source(&source)
        .manual("spinguard manual");
    let mut w: Vec<u8> = Vec::new();
    // Rendering into memory cannot fail.
    let _ = man.render_title(&mut w);
    let _ = man.render_name_section(&mut w);
    let _ = man.render_synopsis_section(&mut w);
    let _ = man.render_description_section(&mut w);
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        let _ = man.render_options_section(&mut w);
    }
    if cmd.has_subcommands() {
        let _ = man.render_subcommands_section(&mut w);
    }
    let mut roff = Roff::new();
    let after = cmd
        .get_after_long_help()
        .or_else(|| cmd.get_after_help())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let (exit, notes) = split_exit_status(&after);
    if !notes.is_empty() {
        roff.control("SH", ["NOTES"]);
        paragraphs(&mut roff, &notes);
    }
    environment(&mut roff, sub);
    roff.control("SH", ["EXIT STATUS"]);
    match (sub, exit) {
        (_, Some(exit)) => paragraphs(&mut roff, &[exit]),
        (None, None) => paragraphs(&mut roff, &[TOP_EXIT_STATUS.to_string()]),
        // tests/man.rs makes this impossible to ship: every subcommand's
        // --help has an "Exit status:" paragraph.
        (Some(_), None) => paragraphs(
            &mut roff,
            &["0 on success, 1 on failure, 2 for a usage error.".into()],
        ),
    }
    see_also(&mut roff, sub, subs);
    roff.control("SH", ["VERSION"]);
    roff.text([roman(source)]);
    let mut text = String::from_utf8_lossy(&w).into_owned();
    text.push_str(&roff.to_roff());
    text
}

const TOP_EXIT_STATUS: &str = "0 on success; 1 when spinguard fails (the message says why); \
2 for a usage error (a bad option or value, on the command line or in a SPINGUARD_ variable). \
run exits with its program's status, diagnose with its verdict (3 at-risk, 4 livelock): see \
their pages.\n\n\
A closed standard output is not an error: `spinguard man | head -1` stops printing and exits 0 \
(diagnose keeps its verdict, run its program's status). A standard output that cannot be \
written otherwise (a full disk) is an error: one line on stderr, exit 1. A standard error that \
cannot be written changes no exit status.";

/// The "Exit status: …" paragraph of a `--help` epilogue, and the others.
fn split_exit_status(after: &str) -> (Option<String>, Vec<String>) {
    let mut exit = None;
    let mut rest = Vec::new();
    for p in after.split("\n\n").filter(|p| !p.trim().is_empty()) {
        match p.strip_prefix("Exit status:") {
            Some(e) if exit.is_none() => {
                let e = e.trim();
                let mut c = e.chars();
                let first = c.next().map(|f| f.to_uppercase().to_string());
                exit = Some(first.unwrap_or_default() + c.as_str());
            }
            _ => rest.push(p.to_string()),
        }
    }
    (exit, rest)
}

/// Paragraphs of `--help` text: prose is filled; a paragraph with indented
/// lines (a table, an example) is kept as laid out.
fn paragraphs(roff: &mut Roff, ps: &[String]) {
    for (i, p) in ps.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        let laid_out = p.lines().skip(1).any(|l| l.starts_with(' '));
        if laid_out {
            roff.control("nf", []);
        }
        for line in p.lines() {
            roff.text([roman(line)]);
        }
        if laid_out {
            roff.control("fi", []);
        }
    }
}

/// Every environment variable spinguard reads or sets, and which pages name it.
struct Var {
    name: &'static str,
    /// Subcommands whose page lists it; spinguard(1) lists them all.
    pages: &'static [&'static str],
    text: &'static str,
}

const ALL: &[&str] = &[
    "run",
    "attach",
    "diagnose",
    "watch",
    "listen",
    "demo",
    "shim-path",
    "completions",
    "man",
];

const VARS: &[Var] = &[
    Var {
        name: env::SIGNALS,
        pages: &["run", "attach"],
        text: "The guard set when --signals is not given, in its syntax (names or numbers, \
comma-separated, or all). The shim reads it too; run --mode preload sets it for the program.",
    },
    Var {
        name: env::MODE,
        pages: &[],
        text: "The shim's mode: guard (the default) or observe (count the guarded calls, block nothing).",
    },
    Var {
        name: env::LOG,
        pages: &["run"],
        text: "What the shim prints on stderr, comma-separated: summary (one line when a program \
exits), calls (that line only from a program that made a guarded call), exec (one line per \
program started, naming what guards it); off: nothing. run -v sets exec,calls for the program \
unless this is set.",
    },
    Var {
        name: env::EVENTS,
        pages: &["run", "listen"],
        text: "The Unix datagram socket of a spinguard listen the shim sends its events to \
(docs/events.md). run --events PATH sets it for the program.",
    },
    Var {
        name: env::SHIM,
        pages: &["shim-path", "run", "demo"],
        text: "The shim to use, instead of looking next to the spinguard binary and in \
../lib/spinguard/ relative to it.",
    },
    Var {
        name: env::BIN,
        pages: &["run"],
        text: "The spinguard binary the shim hands a static or Go program to (spinguard run \
--mode ptrace). run sets it for the program; otherwise the shim looks next to itself and in \
../../bin/ relative to it.",
    },
    Var {
        name: "LD_PRELOAD",
        pages: &["run"],
        text: "run --mode preload puts the shim in front of whatever it already holds.",
    },
    Var {
        name: "RUST_LOG",
        pages: ALL,
        text: "Which log lines spinguard prints, over -v and -q, in env_logger's syntax \
(for example spinguard=debug; regular expressions are not supported).",
    },
    Var {
        name: env::FORCE_FALLBACK,
        pages: &["run", "attach"],
        text: "Make the ptrace engine do without kernel features newer than 4.18, as it does on \
such kernels: syscall-info (PTRACE_GET_SYSCALL_INFO: the registers instead), pidfd (kill until \
the program is reaped), all; comma-separated. For tests.",
    },
    Var {
        name: env::PROBE_NO_NS_PIDS,
        pages: &["diagnose", "watch"],
        text: "1: in a PID namespace of its own, act as on a kernel without \
bpf_get_ns_current_pid_tgid (before Linux 5.7), i.e. refuse, saying so (exit 1). The initial \
namespace needs no such helper and ignores it. For tests.",
    },
    Var {
        name: "JOURNAL_STREAM",
        pages: ALL,
        text: "Set by systemd for a service whose output goes to the journal. When it names \
spinguard's standard error, log lines carry sd-daemon priority prefixes (--log-format auto).",
    },
];

fn environment(roff: &mut Roff, sub: Option<&str>) {
    let vars: Vec<&Var> = VARS
        .iter()
        .filter(|v| sub.is_none_or(|s| v.pages.contains(&s)))
        .collect();
    if vars.is_empty() {
        return;
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.text([roman(
        "An empty variable is the same as an unset one. A value that is not valid \
(an unknown signal, bytes that are not UTF-8) is an error, exit 2, never quietly the \
default; the shim, which cannot refuse to start a program, prints a warning and uses the default.",
    )]);
    for v in vars {
        roff.control("TP", []);
        roff.text([bold(v.name)]);
        roff.text([roman(v.text)]);
    }
}

/// Other pages per subcommand (spinguard's own and the system's).
fn related(
    sub: &str,
) -> (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
) {
    match sub {
        "run" => (
            &["attach", "diagnose", "listen", "shim-path"],
            &[
                ("ld.so", "8"),
                ("seccomp", "2"),
                ("ptrace", "2"),
                ("bpf", "2"),
            ],
        ),
        "attach" => (
            &["run", "diagnose", "listen"],
            &[("ptrace", "2"), ("strace", "1")],
        ),
        "diagnose" => (
            &["watch", "attach", "run"],
            &[("bpftrace", "8"), ("strace", "1"), ("signal", "7")],
        ),
        "watch" => (
            &["diagnose", "attach", "run", "listen"],
            &[("bpftrace", "8"), ("bpf", "2"), ("perf_event_open", "2")],
        ),
        "listen" => (&["run", "attach", "diagnose"], &[("unix", "7")]),
        "shim-path" => (&["run"], &[("ld.so", "8")]),
        "demo" => (&["run", "diagnose"], &[]),
        "completions" => (&["man"], &[]),
        "man" => (&["completions"], &[("man", "1")]),
        _ => (&[], &[]),
    }
}

/// SEE ALSO: only spinguard pages that [`pages`] writes.
fn see_also(roff: &mut Roff, sub: Option<&str>, subs: &[String]) {
    let mut refs: Vec<Inline> = Vec::new();
    let mut add = |name: String, section: &str| {
        if !refs.is_empty() {
            refs.push(roman(", "));
        }
        refs.push(bold(name));
        refs.push(roman(format!("({section})")));
    };
    match sub {
        None => {
            for s in subs {
                add(format!("spinguard-{s}"), "1");
            }
            for (n, s) in [
                ("bpf", "2"),
                ("ptrace", "2"),
                ("seccomp", "2"),
                ("signal", "7"),
                ("sd-daemon", "3"),
                ("systemd.exec", "5"),
            ] {
                add(n.into(), s);
            }
        }
        Some(sub) => {
            add("spinguard".into(), "1");
            let (ours, system) = related(sub);
            for s in ours.iter().filter(|s| subs.iter().any(|x| x == *s)) {
                add(format!("spinguard-{s}"), "1");
            }
            for (n, s) in system {
                add(n.to_string(), s);
            }
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text(refs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_paragraph_is_taken_out() {
        let (e, rest) =
            split_exit_status("Modes:\n  a\n  b\n\nExit status: 0 ok;\n1 not.\n\nExample: x");
        assert_eq!(e.as_deref(), Some("0 ok;\n1 not."));
        assert_eq!(rest, ["Modes:\n  a\n  b", "Example: x"]);
        let (e, _) = split_exit_status("Exit status: the program's own.");
        assert_eq!(e.as_deref(), Some("The program's own."));
    }
}
