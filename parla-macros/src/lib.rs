//! parla macros
