#[parla::specialize]
fn norm(x: &[f64]) -> f64 {
    x.iter().sum()
}

#[parla::variant(norm, tpu)]
fn norm_tpu(x: &[f64]) -> f64 {
    x.len() as f64
}

fn main() {}
