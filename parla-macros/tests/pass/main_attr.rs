#[parla::main(cpu_threads = 2, virtual_gpus = 2)]
async fn main() -> parla::Result<()> {
    let v = parla::task(async { 41 + 1 })
        .placement(parla::Placement::AnyGpu)
        .await?;
    assert_eq!(v, 42);
    Ok(())
}
