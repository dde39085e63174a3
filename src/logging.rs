//! spinguard's own log lines on stderr, each with its level:
//! - text: `spinguard: warning: …` (error, warning, info, debug, trace), as
//!   rustup and git say it;
//! - journal: `<4>spinguard: …`, the sd-daemon(3) prefix journald turns into
//!   the entry's PRIORITY (3 error, 4 warning, 6 info, 7 debug and trace);
//!   chosen by itself when stderr is the journal stream systemd gave us;
//! - json: one object per line, `{"ts":…,"level":"warn","target":…,"msg":…}`,
//!   `ts` in microseconds since the epoch like the events' `ts`.
//!
//! Writing them never fails a command: a closed or full stderr loses the
//! line, nothing else (env_logger drops write errors; [`error`] does too).

use std::fmt::Display;
use std::io::Write;
use std::sync::OnceLock;

use log::{Level, LevelFilter};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// journal when stderr is the journald stream ($JOURNAL_STREAM), else text
    #[default]
    Auto,
    /// `spinguard: LEVEL: message`
    Text,
    /// `<N>spinguard: message` (sd-daemon priority prefixes)
    Journal,
    /// one JSON object per line
    Json,
}

/// The format chosen at [`init`] ([`Format::Auto`] resolved).
static FORMAT: OnceLock<Format> = OnceLock::new();

/// Starts the logger: `level` unless `RUST_LOG` (env_logger's syntax, without
/// regular expressions) says otherwise. Call once; later calls change nothing.
pub fn init(format: Format, level: LevelFilter) {
    let format = match format {
        Format::Auto if stderr_is_journal() => Format::Journal,
        Format::Auto => Format::Text,
        f => f,
    };
    if FORMAT.set(format).is_err() {
        return;
    }
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format(move |buf, r| {
            buf.write_all(line(format, r.level(), r.target(), r.args()).as_bytes())
        })
        .try_init();
}

/// A one-line error on stderr, whatever the level filter (`-q`, `RUST_LOG`
/// cannot hide why spinguard exits non-zero). For errors that end a command.
pub fn error(msg: impl Display) {
    let format = FORMAT.get().copied().unwrap_or(Format::Text);
    let line = line(format, Level::Error, "spinguard", &msg);
    // Nothing to do if stderr is closed or full: the exit status remains.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// One log record as the bytes to write, newline included.
pub fn line(format: Format, level: Level, target: &str, msg: &dyn Display) -> String {
    let msg = msg.to_string();
    match format {
        Format::Json => {
            let ts = spinguard_common::events::now_us();
            let level = level.as_str().to_ascii_lowercase();
            // serde_json escapes: a message may hold quotes or newlines.
            let s = |v: &str| serde_json::Value::from(v).to_string();
            format!(
                "{{\"ts\":{ts},\"level\":{},\"target\":{},\"msg\":{}}}\n",
                s(&level),
                s(target),
                s(&msg)
            )
        }
        // journald reads each line as an entry: every line gets the prefix.
        Format::Journal => msg
            .lines()
            .map(|l| format!("<{}>spinguard: {l}\n", priority(level)))
            .collect(),
        Format::Text | Format::Auto => {
            let name = match level {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            format!("spinguard: {name}: {msg}\n")
        }
    }
}

/// syslog(3) priorities, as sd-daemon(3) lists them.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,                // SD_ERR
        Level::Warn => 4,                 // SD_WARNING
        Level::Info => 6,                 // SD_INFO
        Level::Debug | Level::Trace => 7, // SD_DEBUG
    }
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr (or
/// stdout) is connected to the journal. systemd.exec(5): a program should
/// compare it with its stderr's device and inode, since the variable is
/// inherited by children whose stderr may have been redirected elsewhere.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    stderr_id().is_some_and(|id| id == (dev, ino))
}

/// `(st_dev, st_ino)` of fd 2, through a duplicate so nothing unsafe is needed.
fn stderr_id() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let m = std::fs::File::from(fd).metadata().ok()?;
    Some((m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_carry_the_level() {
        let l = |lv| line(Format::Text, lv, "x", &"seized 3 threads");
        assert_eq!(l(Level::Error), "spinguard: error: seized 3 threads\n");
        assert_eq!(l(Level::Warn), "spinguard: warning: seized 3 threads\n");
        assert_eq!(l(Level::Info), "spinguard: info: seized 3 threads\n");
    }

    #[test]
    fn journal_lines_carry_sd_daemon_priorities_on_every_line() {
        assert_eq!(
            line(Format::Journal, Level::Warn, "x", &"careful"),
            "<4>spinguard: careful\n"
        );
        assert_eq!(
            line(Format::Journal, Level::Error, "x", &"one\ntwo"),
            "<3>spinguard: one\n<3>spinguard: two\n"
        );
        assert!(line(Format::Journal, Level::Trace, "x", &"t").starts_with("<7>"));
        assert!(line(Format::Journal, Level::Info, "x", &"i").starts_with("<6>"));
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let l = line(
            Format::Json,
            Level::Warn,
            "spinguard::listen",
            &"a \"q\"\nb",
        );
        assert!(
            l.ends_with('\n') && l.trim_end().lines().count() == 1,
            "{l}"
        );
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "spinguard::listen");
        assert_eq!(v["msg"], "a \"q\"\nb");
        assert!(v["ts"].as_u64().unwrap() > 1_600_000_000_000_000);
    }
}
