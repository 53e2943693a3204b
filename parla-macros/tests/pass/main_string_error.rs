//! `#[parla::main]` on a `main` whose error is a `String` (`Display`, not a `std` error).

#[parla::main(cpu_threads = 1)]
async fn main() -> Result<(), String> {
    let v = parla::task(async { 1 }).await.map_err(|e| e.to_string())?;
    assert_eq!(v, 1);
    Ok(())
}
