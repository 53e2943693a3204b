// A task's body, and each `return` in it, coerces to the declared return type, as in an
// `async fn`; a body that never returns builds without warnings.
#![deny(warnings)]

use std::fmt::Display;
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

#[parla::task]
async fn shape(c: bool) -> Box<dyn Display + Send> {
    if c {
        return Box::new(1);
    }
    Box::new("a")
}

#[parla::task]
async fn slice(v: &'static [i32; 3], c: bool) -> &'static [i32] {
    if c {
        return v;
    }
    &v[1..]
}

/// `return`s inside closures and `async` blocks of the body are theirs.
#[parla::task]
async fn inner_returns(x: i32) -> Result<i32, String> {
    let f = |y: i32| -> Option<i32> {
        if y < 0 {
            return None;
        }
        Some(y)
    };
    let g = async move {
        if x > 100 {
            return 100u8;
        }
        1u8
    };
    if f(x).is_none() {
        return Err(format!("{x} is negative"));
    }
    Ok(x + i32::from(g.await))
}

/// The crate's own error type, and a body that imports another of the same name: the
/// returns still have the declared type.
#[derive(Debug)]
pub struct Error(String);

#[parla::task]
async fn load(path: String) -> Result<usize, Error> {
    use std::io::Error;
    let r: Result<String, Error> = std::fs::read_to_string(&path);
    match r {
        Ok(s) => return Ok(s.len()),
        Err(e) => return Err(crate::Error(e.to_string())),
    }
}

#[parla::task]
async fn opaque(x: i32) -> impl Display + Send + 'static {
    x * 3
}

#[parla::task]
async fn never_returns() -> i32 {
    todo!()
}

#[parla::task]
async fn serve() {
    loop {
        std::future::ready(()).await;
    }
}

fn main() {
    // (Built, never run.)
    let _ = (never_returns(), serve());
    let rt = parla::Runtime::builder().cpu_threads(1).build().unwrap();
    rt.block_on(async {
        assert_eq!(make(3.0).await.unwrap().area(), 9.0);
        assert_eq!(*leaked(7).await.unwrap(), 7);
        assert_eq!(parse(" 21 ".into()).await.unwrap().unwrap(), 42);
        assert!(parse("x".into()).await.unwrap().is_err());
        assert_eq!(shape(true).await.unwrap().to_string(), "1");
        assert_eq!(shape(false).await.unwrap().to_string(), "a");
        assert_eq!(slice(&[1, 2, 3], true).await.unwrap(), &[1, 2, 3]);
        assert_eq!(slice(&[1, 2, 3], false).await.unwrap(), &[2, 3]);
        assert_eq!(inner_returns(5).await.unwrap(), Ok(6));
        assert_eq!(inner_returns(500).await.unwrap(), Ok(600));
        assert!(inner_returns(-1).await.unwrap().is_err());
        assert_eq!(opaque(4).await.unwrap().to_string(), "12");
        let missing = load("/nonexistent/parla".into()).await.unwrap();
        assert!(matches!(missing, Err(Error(ref m)) if !m.is_empty()), "{missing:?}");
    });
}
