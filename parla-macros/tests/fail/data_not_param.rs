#[parla::task(reads = [missing])]
async fn f(a: u32) -> u32 {
    a
}

fn main() {}
