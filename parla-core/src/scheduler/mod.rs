//! Scheduling decisions as plain state machines: [`mapping`] (which device a task goes to)
//! and admission (whether its VCUs and memory fit now). Neither runs anything nor names the
//! executor: admission returns what it admitted, and the executor launches it. How the
//! pieces fit together is in `README.md` beside this file.

pub(crate) mod admission;
pub mod mapping;
pub(crate) mod turn;
