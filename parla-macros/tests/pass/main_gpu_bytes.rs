//! `virtual_gpus = (2, 16 << 30)` gives each virtual GPU 16 GiB, not an `i32` overflow's 0.

#[parla::main(cpu_threads = 1, virtual_gpus = (2, 16 << 30))]
async fn main() -> parla::Result<()> {
    let reserved = parla::task(async { parla::current_task().unwrap().memory() })
        .placement(parla::Placement::Gpu(1))
        .memory(15 << 30)
        .await?;
    assert_eq!(reserved, 15 << 30);
    Ok(())
}
