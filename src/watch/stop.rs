//! Ctrl-C, SIGTERM and SIGHUP as values: blocked in every thread (call
//! [`Stop::new`] before starting any), and taken by the main loop between
//! its ticks, so a stop always goes through the same clean ending (and,
//! for watch, through every observer's `finish`).

use crate::listen::sys::{poll_readable, SignalFd};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

pub struct Stop {
    fd: SignalFd,
}

impl Stop {
    pub fn new() -> io::Result<Stop> {
        Ok(Stop {
            fd: SignalFd::new(&STOP_SIGNALS)?,
        })
    }

    /// Waits up to `d`; the stop signal, if one came.
    pub fn wait(&self, d: Duration) -> io::Result<Option<i32>> {
        let ms = d.as_millis().min(i32::MAX as u128) as i32;
        let [ready] = poll_readable([self.fd.as_raw_fd()], ms)?;
        Ok(if ready { self.fd.read() } else { None })
    }
}
