// A handle by value is not a dependency: the error says to pass it by reference.
fn main() {
    let rt = parla::Runtime::builder().cpu_threads(1).build().unwrap();
    rt.block_on(async {
        let h = parla::task(async {}).spawn();
        parla::task(async {}).after(h).await
    })
    .unwrap();
}
