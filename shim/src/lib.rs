//! LD_PRELOAD shim (being written).
