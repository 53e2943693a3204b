//! `#[parla::main]` on a `main` returning `Box<dyn Error>`, with `?` on a parla error.

#[parla::main(cpu_threads = 1, virtual_gpus = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let v = parla::task(async { 6 * 7 }).await?;
    assert_eq!(v, 42);
    let n: u32 = "42".parse()?;
    assert_eq!(n, 42);
    Ok(())
}
