//! parla
