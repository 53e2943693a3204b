//! parla gpu
