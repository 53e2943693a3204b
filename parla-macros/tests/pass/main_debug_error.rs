//! `#[parla::main]` on a `main` whose error is only `Debug`: `std` reports it, as before.

#[derive(Debug)]
#[allow(dead_code)]
struct Failed(u32);

#[parla::main(cpu_threads = 1)]
async fn main() -> Result<(), Failed> {
    parla::task(async { 1 }).await.map_err(|_| Failed(1))?;
    Ok(())
}
