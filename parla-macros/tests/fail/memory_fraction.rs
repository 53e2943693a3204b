#[parla::task(placement = gpu, memory = 1.5)]
async fn fraction() {}

fn main() {}
