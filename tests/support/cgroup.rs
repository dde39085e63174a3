//! A cgroup (v2) of a test's own, to confine `watch --rescue` to the
//! processes the test started (`--rescue-cgroup`): other engineers' loaders
//! spin on the same host.

use std::path::PathBuf;
use std::time::Duration;

/// A cgroup (v2) of the test's own, removed at the end; its path as
/// /proc/PID/cgroup shows it is what --rescue-cgroup takes.
pub struct Cgroup {
    dir: PathBuf,
    /// Its path as /proc/PID/cgroup shows it.
    pub name: String,
}

impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| PathBuf::from(f[1]))
            .expect("no cgroup2 hierarchy mounted: these tests confine watch --rescue to a cgroup");
        let name = format!("spinguard-rescue-{tag}-{}", std::process::id());
        let dir = root.join(&name);
        let _ = std::fs::create_dir(&dir);
        assert!(dir.is_dir(), "cannot create {}", dir.display());
        Cgroup {
            dir,
            name: format!("/{name}"),
        }
    }

    /// Moves the whole process (every thread) into the cgroup.
    pub fn add(&self, pid: i32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes are killed by their guards first; a dead process
        // leaves the cgroup only once reaped.
        for _ in 0..200 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
