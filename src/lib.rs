//! The spinguard CLI's library half: the real bpf loader used by `demo`,
//! the examples and the tests.
