#[parla::task(memory = "1GB")]
async fn big() {}

fn main() {}
