//! `#[parla::main]` on a `main` returning nothing.

#[parla::main(cpu_threads = 1)]
async fn main() {
    assert_eq!(parla::task(async { 1 }).await.unwrap(), 1);
}
