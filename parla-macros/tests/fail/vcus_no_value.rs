#[parla::task(placement = cpu, vcus)]
async fn half() {}

fn main() {}
