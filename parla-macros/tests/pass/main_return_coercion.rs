//! `#[parla::main]`: a `return` in the body coerces to the declared type, as in an
//! `async fn` (`Box<ParseIntError>` to `Box<dyn Error>`).
#![deny(warnings)]

#[parla::main(cpu_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().count() > 100 {
        return Err(Box::new("x".parse::<u8>().unwrap_err()));
    }
    let v = parla::task(async { 6 * 7 }).await?;
    assert_eq!(v, 42);
    Ok(())
}
