// The runtime's hooks into a data object are `unsafe` to call: called from elsewhere, they
// could free the memory under a running task's view.
use ndarray::Array1;
use parla::array::PArray;
use parla::data::AsData;

fn main() {
    let a = PArray::from(Array1::from_elem(4, 1.0f64));
    let obj = a.as_data();
    obj.flow().clear();
}
