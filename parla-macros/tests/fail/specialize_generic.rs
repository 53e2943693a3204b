#[parla::specialize]
fn norm<T: Copy>(x: &[T]) -> usize {
    x.len()
}

fn main() {}
