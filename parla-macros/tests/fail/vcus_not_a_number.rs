#[parla::task(vcus = "half")]
async fn words() {}

fn main() {}
