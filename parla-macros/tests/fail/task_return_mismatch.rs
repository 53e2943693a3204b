// A `return` of the wrong type is reported at its value, as in an `async fn`.
#[parla::task]
async fn f(x: i32) -> i32 {
    if x > 0 {
        return "no";
    }
    x
}

fn main() {
    let _ = f(1);
}
