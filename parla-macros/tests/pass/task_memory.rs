//! Byte sizes are `u64`: `4 << 30` is 4 GiB, not an `i32` overflow.

const MIB: usize = 1 << 20;
const SHIFT: u32 = 33;

#[parla::task(memory = 4 << 30)]
async fn four_gib() -> u64 {
    parla::current_task().unwrap().memory()
}

#[parla::task(memory = (3 * 1024) << 20)]
async fn three_gib() -> u64 {
    parla::current_task().unwrap().memory()
}

#[parla::task(memory = 1 << SHIFT)]
async fn eight_gib() -> u64 {
    parla::current_task().unwrap().memory()
}

#[parla::task(memory = MIB)]
async fn one_mib() -> u64 {
    parla::current_task().unwrap().memory()
}

#[parla::task(memory = 2 * MIB)]
async fn two_mib() -> u64 {
    parla::current_task().unwrap().memory()
}

#[parla::task(memory = n * MIB)]
async fn n_mib(n: usize) -> u64 {
    parla::current_task().unwrap().memory()
}

/// The size of a parameter the body takes: evaluated before the body moves it.
#[parla::task(memory = v.len() * 8)]
async fn of_a_vec(v: Vec<f64>) -> (u64, f64) {
    (parla::current_task().unwrap().memory(), v.iter().sum())
}

fn main() {
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .cpu_memory(64 << 30)
        .gpus([])
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(four_gib().await.unwrap(), 4 << 30);
        assert_eq!(three_gib().await.unwrap(), 3 << 30);
        assert_eq!(eight_gib().await.unwrap(), 8 << 30);
        assert_eq!(one_mib().await.unwrap(), 1 << 20);
        assert_eq!(two_mib().await.unwrap(), 2 << 20);
        assert_eq!(n_mib(5).await.unwrap(), 5 << 20);
        assert_eq!(of_a_vec(vec![1.0; 1000]).await.unwrap(), (8000, 1000.0));
    });
}
