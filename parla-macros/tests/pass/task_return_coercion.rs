// A task's body coerces to the declared return type, as an `async fn`'s does.
use std::sync::Arc;

trait Shape: Send + Sync {
    fn area(&self) -> f64;
}

struct Sq(f64);

impl Shape for Sq {
    fn area(&self) -> f64 {
        self.0 * self.0
    }
}

#[parla::task]
async fn make(s: f64) -> Arc<dyn Shape> {
    Arc::new(Sq(s))
}

#[parla::task]
async fn leaked(v: i32) -> &'static i32 {
    Box::leak(Box::new(v))
}

#[parla::task]
async fn parse(s: String) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    let v: i32 = s.trim().parse()?;
    Ok(v * 2)
}

fn main() {
    let rt = parla::Runtime::builder().cpu_threads(1).build().unwrap();
    rt.block_on(async {
        assert_eq!(make(3.0).await.unwrap().area(), 9.0);
        assert_eq!(*leaked(7).await.unwrap(), 7);
        assert_eq!(parse(" 21 ".into()).await.unwrap().unwrap(), 42);
        assert!(parse("x".into()).await.unwrap().is_err());
    });
}
