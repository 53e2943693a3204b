#[parla::main]
async fn main(n: i32) {
    let _ = n;
}
