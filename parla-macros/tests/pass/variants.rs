//! Function variants: the default body outside tasks, on the CPU without a cpu variant and
//! on virtual GPUs; the cpu variant on the CPU; lifetimes and patterns in arguments.

#[parla::specialize]
fn which(x: u32) -> &'static str {
    let _ = x;
    "default"
}

#[parla::variant(which, gpu)]
fn which_gpu(x: u32) -> &'static str {
    let _ = x;
    "gpu"
}

#[parla::specialize]
fn sum<'a>(xs: &'a [u64], (k, mut acc): (u64, u64)) -> u64 {
    for x in xs {
        acc += x * k;
    }
    acc
}

#[parla::variant(sum, cpu)]
fn sum_cpu<'a>(xs: &'a [u64], (k, _): (u64, u64)) -> u64 {
    xs.iter().map(|x| x * k).sum::<u64>() + 1000
}

mod other {
    #[parla::variant(super::which, cpu)]
    pub fn which_cpu(_x: u32) -> &'static str {
        "cpu"
    }
}

#[parla::main(cpu_threads = 2, virtual_gpus = 1)]
async fn main() {
    assert_eq!(which(1), "default", "outside tasks");
    assert_eq!(sum(&[1, 2], (2, 0)), 6);
    let (cpu, vgpu) = (
        parla::task(async { (which(1), sum(&[1, 2], (2, 0))) }).await.unwrap(),
        parla::task(async { which(1) })
            .placement(parla::Placement::Gpu(0))
            .await
            .unwrap(),
    );
    assert_eq!(cpu, ("cpu", 1006));
    assert_eq!(vgpu, "default", "virtual GPUs run the default body");
    let _ = other::which_cpu(0);
}
