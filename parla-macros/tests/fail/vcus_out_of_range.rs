#[parla::task(vcus = 1.5)]
async fn too_much() {}

fn main() {}
