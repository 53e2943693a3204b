#[parla::task(vcus = "half")]
async fn words() {}

#[parla::task(vcus = 1.0 / 8.0)]
async fn computed() {}

fn main() {}
