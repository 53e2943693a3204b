#[parla::task(vcus = 0.5)]
fn not_async() {}

fn main() {}
