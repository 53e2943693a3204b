#[parla::specialize]
fn norm(x: &[f64]) -> f64 {
    x.iter().sum()
}

#[parla::variant(norm, gpu)]
fn norm_gpu(x: &[f64]) -> f64 {
    x.len() as f64
}

#[parla::variant(norm, gpu)]
fn norm_gpu_again(x: &[f64]) -> f64 {
    x.len() as f64
}

fn main() {}
