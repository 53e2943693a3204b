fn norm(x: &[f64]) -> f64 {
    x.iter().sum()
}

#[parla::variant(norm, gpu)]
fn norm_gpu(x: &[f64]) -> f64 {
    x.len() as f64
}

fn main() {}
