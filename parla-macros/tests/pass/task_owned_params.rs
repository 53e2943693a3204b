//! Parameters that hold no borrow, though references appear in their types: functions and
//! closures taking references, `'static` references.

#[parla::task]
async fn apply(f: fn(&str) -> usize, g: Box<dyn Fn(&str) -> usize + Send>, s: &'static str) -> usize {
    f(s) + g(s)
}

#[parla::task]
async fn higher_ranked(f: Box<dyn for<'a> Fn(&'a [u8]) -> &'a [u8] + Send>) -> usize {
    f(b"abc").len()
}

fn main() {
    let rt = parla::Runtime::builder().cpu_threads(1).build().unwrap();
    let n = rt
        .block_on(async {
            let a = apply(str::len, Box::new(|s: &str| s.len() * 2), "four").await?;
            let b = higher_ranked(Box::new(|b: &[u8]| &b[1..])).await?;
            Ok::<_, parla::TaskError>(a + b)
        })
        .unwrap();
    assert_eq!(n, 14);
}
