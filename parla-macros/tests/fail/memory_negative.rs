#[parla::task(memory = -1)]
async fn negative() {}

fn main() {}
