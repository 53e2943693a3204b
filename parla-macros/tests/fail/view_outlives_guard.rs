// A view or slice made from a PArray's guard borrows the guard: it cannot outlive it (or
// the borrow flag the guard holds), even for an array that lives for good.
use ndarray::{ArrayView1, Ix1};
use parla::array::PArray;

fn view(a: &'static PArray<f64, Ix1>) -> ArrayView1<'static, f64> {
    let r = a.read().unwrap();
    r.view()
}

fn slice(a: &'static PArray<f64, Ix1>) -> &'static [f64] {
    a.read().unwrap().as_slice().unwrap()
}

fn main() {
    let _ = (view, slice);
}
