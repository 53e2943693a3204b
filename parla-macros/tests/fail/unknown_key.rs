#[parla::task(placement = cpu, vcu = 0.5)]
async fn typo() {}

fn main() {}
