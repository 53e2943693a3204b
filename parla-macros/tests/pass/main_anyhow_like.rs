//! `#[parla::main]` on a `main` returning an error shaped like `anyhow::Error`: `Display`,
//! `Debug`, dereferences to a `std` error, but is not one itself.

use std::error::Error as StdError;
use std::fmt;
use std::ops::Deref;

struct Report(Box<dyn StdError + Send + Sync>);

impl<E: StdError + Send + Sync + 'static> From<E> for Report {
    fn from(e: E) -> Report {
        Report(Box::new(e))
    }
}

impl Deref for Report {
    type Target = dyn StdError + Send + Sync;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[parla::main(cpu_threads = 1)]
async fn main() -> Result<(), Report> {
    let v = parla::task(async { 1 }).await?;
    assert_eq!(v, 1);
    Ok(())
}
