//! Kernels and helpers for the GPU tests.
#![allow(dead_code)]

/// CUDA C++ kernels used by the tests, compiled with NVRTC at run time.
pub const KERNELS: &str = r#"
extern "C" __global__ void empty() {}

extern "C" __global__ void increment(unsigned int *x) {
    if (threadIdx.x == 0 && blockIdx.x == 0) { *x += 1; }
}

// Reads *x, spins for about `ns` nanoseconds, then writes what it read plus one: two of
// these that overlap lose an increment.
extern "C" __global__ void slow_increment(unsigned long long ns, unsigned int *x) {
    if (threadIdx.x != 0 || blockIdx.x != 0) { return; }
    unsigned int v = *x;
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
    *x = v + 1;
}

// Spins for about `ns` nanoseconds of GPU time (globaltimer), then writes 1 to *flag.
extern "C" __global__ void spin(unsigned long long ns, unsigned int *flag) {
    unsigned long long start;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    unsigned long long now = start;
    while (now - start < ns) {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    }
    if (flag != 0 && threadIdx.x == 0) { *flag = 1; }
}

// Spins for about `ns` nanoseconds, then writes the GPU's global time (ns) to *out.
extern "C" __global__ void spin_then_stamp(unsigned long long ns, unsigned long long *out) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
    *out = now;
}

// Writes the GPU's global time (ns) to *out.
extern "C" __global__ void stamp(unsigned long long *out) {
    unsigned long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    *out = now;
}

extern "C" __global__ void fault(unsigned int *p) {
    // Writes through an address that is not mapped: CUDA_ERROR_ILLEGAL_ADDRESS.
    unsigned int *bad = (unsigned int *)(0x10);
    *bad = *p;
}
"#;

/// A runtime on every CUDA device found, or `None` (with a message) when there is none.
pub fn real() -> Option<parla::Runtime> {
    let rt = parla::Runtime::builder()
        .cpu_threads(4)
        .build()
        .expect("runtime");
    if rt.has_real_gpus() {
        Some(rt)
    } else {
        eprintln!("no CUDA GPU on this machine");
        None
    }
}
