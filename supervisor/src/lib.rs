//! ptrace engine (being written).
