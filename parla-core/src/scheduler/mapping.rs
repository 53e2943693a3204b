//! Mapping: choosing one device for a task whose placement allows several.
//!
//! The runtime asks its [`MappingPolicy`] only when a task's placement leaves more than one
//! device that could ever hold it; a single-device placement skips the policy. Failed
//! devices are left out of the candidates while others remain.

use crate::device::{Arch, Demand, Device, Usage, VCU_ONE};

/// One device a task could be mapped to, with its load at this instant.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// The device.
    pub device: Device,
    /// What the task would reserve there (the device's default VCUs resolved).
    pub demand: Demand,
    /// What is reserved and queued on the device now.
    pub usage: Usage,
    /// The device's memory budget in bytes.
    pub memory_capacity: u64,
    /// Tasks running on the device now.
    pub running: usize,
    /// How many tasks the device runs at once by design (CPU worker threads, GPU streams).
    pub slots: usize,
    /// Bytes of the data the task declared (reads and writes).
    pub data_bytes: u64,
    /// Of those, the bytes with a valid copy on this device now (no copy needed).
    pub data_resident: u64,
}

impl Candidate {
    /// Whether the task would be admitted at once.
    pub fn fits_now(&self) -> bool {
        self.usage.waiting == 0
            && self.usage.vcu + self.demand.vcu <= VCU_ONE
            && self.usage.mem + self.demand.mem <= self.memory_capacity
    }

    /// How many tasks of the task's demand the device runs at once: its slots, or fewer
    /// where the task's VCUs or memory let fewer of them in at a time (at least one).
    ///
    /// ```
    /// use parla_core::Candidate;
    /// use parla_core::device::{Demand, Device, Usage};
    ///
    /// let gpu = Candidate {
    ///     device: Device::gpu(0),
    ///     demand: Demand { vcu: 0, mem: 600 << 20 }, // 600 MiB of workspace
    ///     usage: Usage::default(),
    ///     memory_capacity: 1 << 30,                   // of 1 GiB
    ///     running: 0,
    ///     slots: 8,
    ///     data_bytes: 0,
    ///     data_resident: 0,
    /// };
    /// assert_eq!(gpu.capacity(), 1);
    /// ```
    pub fn capacity(&self) -> usize {
        let mut n = self.slots.max(1) as u64;
        if let Some(fit) = u64::from(VCU_ONE).checked_div(u64::from(self.demand.vcu)) {
            n = n.min(fit);
        }
        if let Some(fit) = self.memory_capacity.checked_div(self.demand.mem) {
            n = n.min(fit);
        }
        n.max(1) as usize
    }

    /// Running and queued tasks per task the device runs at once ([`capacity`](Self::capacity)).
    pub fn occupancy(&self) -> f64 {
        (self.running + self.usage.waiting) as f64 / self.capacity() as f64
    }

    /// How loaded the device is: the VCUs in use plus the occupancy.
    pub fn load(&self) -> f64 {
        1.0 - self.free_vcus() + self.occupancy()
    }

    /// Free VCUs as a fraction of the device.
    pub fn free_vcus(&self) -> f64 {
        (VCU_ONE.saturating_sub(self.usage.vcu)) as f64 / VCU_ONE as f64
    }

    /// The fraction of the task's data that would have to be copied to this device
    /// (0.0 when the task declared none).
    pub fn missing_data(&self) -> f64 {
        if self.data_bytes == 0 {
            0.0
        } else {
            self.data_bytes.saturating_sub(self.data_resident) as f64 / self.data_bytes as f64
        }
    }

    /// Free memory as a fraction of the budget (1.0 for a zero budget).
    pub fn free_memory(&self) -> f64 {
        if self.memory_capacity == 0 {
            1.0
        } else {
            self.memory_capacity.saturating_sub(self.usage.mem) as f64 / self.memory_capacity as f64
        }
    }
}

/// Chooses a device among candidates. Implement it to change how list placements are
/// mapped; the runtime calls it on the thread that made the task ready, so keep it cheap.
pub trait MappingPolicy: Send + Sync + 'static {
    /// The index in `candidates` (never empty) of the device to use.
    fn choose(&self, candidates: &[Candidate]) -> usize;
}

/// The default policy: the device with the most free capacity, weighed against where the
/// task's data is.
///
/// Devices where the task fits at once come first; then the lowest cost: the load (VCUs in
/// use plus running and queued tasks per task of this demand the device runs at once:
/// [`Candidate::capacity`]) plus the fraction of the task's data that would have to be
/// copied there (a task whose data all has to move counts as one more task per slot); then
/// the most free memory; on a tie, a GPU before the CPU, and the lower index.
#[derive(Debug, Clone, Copy, Default)]
pub struct MostFree;

impl MappingPolicy for MostFree {
    fn choose(&self, c: &[Candidate]) -> usize {
        let key = |x: &Candidate| {
            (
                !x.fits_now(),
                ordered(x.load() + x.missing_data()),
                ordered(-x.free_memory()),
                x.device.arch() != Arch::Gpu,
                x.device.index(),
            )
        };
        (0..c.len()).min_by_key(|&i| key(&c[i])).unwrap_or(0)
    }
}

/// A total order on finite floats for sorting keys.
fn ordered(v: f64) -> i64 {
    (v * 1e9) as i64
}

#[cfg(test)]
mod test {
    use super::*;

    fn cand(device: Device, vcu: u32, running: usize, waiting: usize) -> Candidate {
        Candidate {
            device,
            demand: Demand { vcu: 0, mem: 0 },
            usage: Usage {
                vcu,
                mem: 0,
                waiting,
            },
            memory_capacity: 100,
            running,
            slots: 2,
            data_bytes: 0,
            data_resident: 0,
        }
    }

    #[test]
    fn data_draws_tasks_to_where_it_is() {
        let p = MostFree;
        let with = |mut c: Candidate, resident| {
            c.data_bytes = 100;
            c.data_resident = resident;
            c
        };
        // Equal load: the GPU holding the data wins over the other GPU.
        assert_eq!(
            p.choose(&[
                with(cand(Device::gpu(0), 0, 1, 0), 0),
                with(cand(Device::gpu(1), 0, 1, 0), 100)
            ]),
            1
        );
        // A much busier device loses even with the data.
        assert_eq!(
            p.choose(&[
                with(cand(Device::gpu(0), 0, 0, 0), 0),
                with(cand(Device::gpu(1), 0, 6, 0), 100)
            ]),
            0
        );
    }

    #[test]
    fn gpu_on_ties_then_least_loaded() {
        let p = MostFree;
        assert_eq!(
            p.choose(&[cand(Device::CPU, 0, 0, 0), cand(Device::gpu(0), 0, 0, 0)]),
            1
        );
        assert_eq!(
            p.choose(&[cand(Device::CPU, 0, 0, 0), cand(Device::gpu(0), 0, 3, 0)]),
            0
        );
        assert_eq!(
            p.choose(&[cand(Device::gpu(0), 0, 1, 0), cand(Device::gpu(1), 0, 0, 0)]),
            1
        );
        // A GPU whose memory holds one such task at a time counts its queue per task, not
        // per stream: three there (1.5 per stream of two) weigh more than two on a CPU that
        // runs two at once.
        let heavy = |mut c: Candidate, memory| {
            c.demand.mem = 60;
            c.memory_capacity = memory;
            c
        };
        assert_eq!(
            p.choose(&[
                heavy(cand(Device::gpu(0), 0, 1, 2), 100),
                heavy(cand(Device::CPU, 0, 2, 1), 1000)
            ]),
            1
        );
        assert_eq!(heavy(cand(Device::gpu(0), 0, 0, 0), 100).capacity(), 1);
        let mut light = cand(Device::gpu(0), 0, 0, 0);
        light.demand.vcu = VCU_ONE / 4;
        assert_eq!(light.capacity(), 2, "the slots, where VCUs allow more");
        // Full (waiting) devices lose to ones where the task fits now.
        assert_eq!(
            p.choose(&[cand(Device::gpu(0), 0, 0, 1), cand(Device::CPU, 0, 2, 0)]),
            1
        );
    }
}
