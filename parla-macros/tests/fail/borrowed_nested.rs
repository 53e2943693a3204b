#[parla::task]
async fn in_a_vec(v: Vec<&str>) -> usize {
    v.len()
}

#[parla::task]
async fn in_a_tuple(p: (u32, &str)) -> usize {
    p.1.len() + p.0 as usize
}

#[parla::task]
async fn in_a_bound(d: Box<dyn std::fmt::Display + Send + '_>) -> String {
    d.to_string()
}

fn main() {}
