#[parla::task]
async fn count(s: &str) -> usize {
    s.len()
}

fn main() {}
