#[parla::task(placement = [cpu, tpu])]
async fn where_() {}

fn main() {}
