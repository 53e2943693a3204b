//! Devices and placement.
//!
//! A runtime has one CPU device (`cpu:0`, all worker threads together) and zero or more GPUs
//! (`gpu:0`, `gpu:1`, ...), real (CUDA, from the `parla-gpu` backend) or virtual (simulated,
//! for machines without CUDA). Each device has a capacity of 1.0 VCU and a memory budget;
//! Admission keeps reservations within both.

pub mod backend;
pub(crate) mod fence;
mod free_set;

use std::fmt;

pub use crate::scheduler::admission::{Demand, MAX_MEMORY, Usage, VCU_ONE};

/// A device architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// The host CPU.
    Cpu,
    /// A GPU (CUDA or virtual).
    Gpu,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Cpu => "cpu",
            Arch::Gpu => "gpu",
        })
    }
}

/// One device of the runtime: `cpu:0`, `gpu:0`, `gpu:1`, ...
///
/// `Copy`, cheap to compare; [`current_device`](crate::current_device) returns the device the
/// running task was placed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device {
    arch: Arch,
    index: u32,
}

impl Device {
    /// The CPU device, `cpu:0`.
    pub const CPU: Device = Device {
        arch: Arch::Cpu,
        index: 0,
    };

    /// GPU number `index`.
    pub const fn gpu(index: u32) -> Device {
        Device {
            arch: Arch::Gpu,
            index,
        }
    }

    /// The device's architecture.
    pub const fn arch(&self) -> Arch {
        self.arch
    }

    /// The device's index among devices of its architecture.
    pub const fn index(&self) -> u32 {
        self.index
    }

    /// Position in the runtime's device table: the CPU first, then GPUs in order.
    #[inline]
    pub(crate) const fn slot(&self) -> usize {
        match self.arch {
            Arch::Cpu => 0,
            Arch::Gpu => 1 + self.index as usize,
        }
    }

    #[inline]
    pub(crate) const fn from_slot(slot: usize) -> Device {
        if slot == 0 {
            Device::CPU
        } else {
            Device::gpu((slot - 1) as u32)
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.arch, self.index)
    }
}

/// Where a task may run. `Copy`; a task takes one or a list of these.
///
/// ```
/// use parla_core::{Placement, task};
/// let either = task(async {}).placement([Placement::Cpu, Placement::AnyGpu]);
/// let second_gpu = task(async {}).placement(Placement::Gpu(1));
/// # drop((either, second_gpu));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The CPU.
    Cpu,
    /// Any GPU: the mapping policy picks one.
    AnyGpu,
    /// GPU number `i`.
    Gpu(usize),
}

impl From<Device> for Placement {
    fn from(d: Device) -> Placement {
        match d.arch {
            Arch::Cpu => Placement::Cpu,
            Arch::Gpu => Placement::Gpu(d.index as usize),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Cpu => f.write_str("cpu"),
            Placement::AnyGpu => f.write_str("gpu"),
            Placement::Gpu(i) => write!(f, "gpu({i})"),
        }
    }
}

/// A set of placements, as [`TaskBuilder::placement`](crate::TaskBuilder::placement) takes:
/// `Copy`, 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placements {
    cpu: bool,
    any_gpu: bool,
    /// Bit i: `Gpu(i)`.
    gpus: u64,
    /// The first `Gpu(i)` with an index beyond any runtime's (kept for the error; an
    /// index past `u32::MAX` as that).
    beyond: Option<u32>,
}

impl Placements {
    /// The CPU alone (the default).
    pub const CPU: Placements = Placements {
        cpu: true,
        any_gpu: false,
        gpus: 0,
        beyond: None,
    };

    /// Adds a placement.
    pub fn with(mut self, p: Placement) -> Placements {
        match p {
            Placement::Cpu => self.cpu = true,
            Placement::AnyGpu => self.any_gpu = true,
            Placement::Gpu(i) if i < MAX_GPUS => self.gpus |= 1 << i,
            Placement::Gpu(i) => {
                self.beyond.get_or_insert(i.min(u32::MAX as usize) as u32);
            }
        }
        self
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        !self.cpu && !self.any_gpu && self.gpus == 0 && self.beyond.is_none()
    }

    /// Whether this is the CPU alone.
    #[inline]
    pub(crate) fn is_cpu_only(&self) -> bool {
        *self == Placements::CPU
    }
}

impl FromIterator<Placement> for Placements {
    fn from_iter<I: IntoIterator<Item = Placement>>(iter: I) -> Self {
        iter.into_iter()
            .fold(Placements::default(), Placements::with)
    }
}

/// Converts a placement or a collection of placements into a [`Placements`] set.
pub trait IntoPlacements {
    /// The set.
    fn into_placements(self) -> Placements;
}

impl IntoPlacements for Placement {
    fn into_placements(self) -> Placements {
        Placements::default().with(self)
    }
}
impl IntoPlacements for Device {
    fn into_placements(self) -> Placements {
        Placements::default().with(self.into())
    }
}
impl<const N: usize> IntoPlacements for [Placement; N] {
    fn into_placements(self) -> Placements {
        self.into_iter().collect()
    }
}
impl IntoPlacements for &[Placement] {
    fn into_placements(self) -> Placements {
        self.iter().copied().collect()
    }
}
impl IntoPlacements for Vec<Placement> {
    fn into_placements(self) -> Placements {
        self.into_iter().collect()
    }
}
impl IntoPlacements for Placements {
    fn into_placements(self) -> Placements {
        self
    }
}

/// The set of device slots a placement list allows: bit 0 the CPU, bit 1 + i GPU i.
pub(crate) type SlotMask = u64;

/// The most GPUs a runtime manages.
pub const MAX_GPUS: usize = 63;

/// Resolves a placement set against `gpus` GPUs. A list keeps the devices the runtime has
/// (`[cpu, gpu(0)]` on a machine without GPUs is the CPU); an error names the GPUs it
/// lacks when none is left.
pub(crate) fn resolve(p: &Placements, gpus: usize) -> Result<SlotMask, String> {
    let all_gpus: u64 = if gpus == 0 { 0 } else { (1u64 << gpus) - 1 };
    let gpu_bits = if p.any_gpu { all_gpus } else { 0 } | (p.gpus & all_gpus);
    let mask = (p.cpu as u64) | (gpu_bits << 1);
    if mask != 0 {
        return Ok(mask);
    }
    if p.is_empty() {
        return Err("empty placement list".into());
    }
    let mut missing: Vec<String> = (0..u64::BITS as usize)
        .filter(|i| p.gpus & !all_gpus & 1 << i != 0)
        .map(|i| format!("gpu({i})"))
        .collect();
    if let Some(i) = p.beyond {
        // (Indices past `u32::MAX` are kept as that.)
        let above = if i == u32::MAX { " or above" } else { "" };
        missing.push(format!("gpu({i}{above})"));
    }
    if missing.is_empty() {
        return Err("placement gpu: the runtime has no GPU".into());
    }
    Err(format!(
        "placement {}: the runtime has {gpus} GPU{}",
        missing.join(", "),
        if gpus == 1 { "" } else { "s" }
    ))
}

/// Converts a VCU fraction into fixed point, rounding down so that n tasks of 1/n fit; a
/// share above zero is at least one unit (rounded down to none, `vcus(1e-9)` would ask for
/// nothing and run without limit, as `vcus(0.0)` does).
pub(crate) fn vcu_fixed(v: f64) -> u32 {
    let units = (v * VCU_ONE as f64).floor().clamp(0.0, u32::MAX as f64) as u32;
    if units == 0 && v > 0.0 { 1 } else { units }
}

/// Fixed-point VCUs back to a fraction.
pub(crate) fn vcu_float(v: u32) -> f64 {
    v as f64 / VCU_ONE as f64
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_share_above_zero_is_never_none() {
        assert_eq!(vcu_fixed(0.0), 0);
        assert_eq!(vcu_fixed(1e-9), 1);
        assert_eq!(vcu_fixed(f64::MIN_POSITIVE), 1);
        assert_eq!(vcu_fixed(0.5), VCU_ONE / 2);
        assert_eq!(vcu_fixed(1.0), VCU_ONE);
    }

    #[test]
    fn display() {
        assert_eq!(Device::CPU.to_string(), "cpu:0");
        assert_eq!(Device::gpu(1).to_string(), "gpu:1");
        assert_eq!(Device::gpu(1).arch(), Arch::Gpu);
        assert_eq!(Device::from_slot(Device::gpu(3).slot()), Device::gpu(3));
    }

    #[test]
    fn resolve_masks() {
        let r = |p: &[Placement], g| resolve(&p.into_placements(), g);
        assert_eq!(r(&[Placement::Cpu], 0), Ok(1));
        assert_eq!(r(&[Placement::AnyGpu], 2), Ok(0b110));
        assert_eq!(r(&[Placement::Cpu, Placement::Gpu(1)], 2), Ok(0b101));
        let e = r(&[Placement::Gpu(7)], 1).unwrap_err();
        assert!(e.contains("gpu(7)") && e.contains("1 GPU"), "{e}");
        let e = r(&[Placement::Gpu(1000)], 1).unwrap_err();
        assert!(e.contains("gpu(1000)"), "{e}");
        assert!(r(&[Placement::AnyGpu], 0).is_err());
        assert_eq!(r(&[Placement::Cpu, Placement::AnyGpu], 0), Ok(1));
        assert_eq!(r(&[Placement::Cpu, Placement::Gpu(0)], 0), Ok(1));
        assert_eq!(r(&[Placement::Gpu(0), Placement::Gpu(5)], 1), Ok(0b10));
        assert!(
            r(&[Placement::Gpu(5), Placement::Gpu(6)], 1)
                .unwrap_err()
                .contains("gpu(5)")
        );
        assert!(r(&[], 1).unwrap_err().contains("empty"));
        assert!(Placements::CPU.is_cpu_only());
    }

    /// The error names every GPU asked for that the runtime lacks, in index order, and an
    /// index past `u32::MAX` as "or above" (it named `gpu(1)` alone for `[gpu(7), gpu(1)]`,
    /// and `gpu(4294967295)` for `gpu(2^32 + 1)`).
    #[test]
    fn resolve_names_every_missing_gpu() {
        let r = |p: &[Placement], g| resolve(&p.into_placements(), g).unwrap_err();
        assert_eq!(
            r(&[Placement::Gpu(7), Placement::Gpu(1)], 0),
            "placement gpu(1), gpu(7): the runtime has 0 GPUs"
        );
        assert_eq!(
            r(&[Placement::Gpu((1 << 32) + 1)], 2),
            "placement gpu(4294967295 or above): the runtime has 2 GPUs"
        );
        assert_eq!(
            r(&[Placement::Gpu(70), Placement::Gpu(3)], 1),
            "placement gpu(3), gpu(70): the runtime has 1 GPU"
        );
    }

    #[test]
    fn vcu_rounding() {
        assert_eq!(vcu_fixed(0.5), VCU_ONE / 2);
        assert_eq!(vcu_fixed(1.0), VCU_ONE);
        assert!(3 * vcu_fixed(1.0 / 3.0) <= VCU_ONE);
        assert_eq!(vcu_fixed(0.0), 0);
    }
}
