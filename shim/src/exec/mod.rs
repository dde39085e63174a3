//! Guard follows exec: every program this process starts is guarded by the
//! cheapest mechanism that reaches it ([`spinguard_common::mechanism`]). A
//! dynamically linked program keeps the shim in its environment; a static or
//! Go one is handed to `spinguard run --mode ptrace`. Whatever nothing can
//! guard gets one line on stderr.
//!
//! - [`state`]: what the hooks need, taken in the constructor.
//! - [`carray`], [`arena`], [`search`]: argv/envp arrays, memory without
//!   malloc, execvp's PATH search.
//! - [`env`]: the shim kept in a child's environment.
//! - [`supervisor`]: the spinguard binary, and whether we are traced already.
//! - [`plan`]: the decision for one exec.
//! - [`family`], [`spawn`], [`shell`]: the hooks (exec family, posix_spawn,
//!   system and popen); `list.c` gathers execl/execle/execlp's arguments.

mod arena;
mod carray;
mod env;
mod family;
mod plan;
mod search;
mod shell;
mod spawn;
pub(crate) mod state;
mod supervisor;
