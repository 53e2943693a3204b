//! The smallest parla program: one task, its name and its device.
//!
//! ```text
//! cargo run --release --example hello
//! ```

use parla::prelude::*;

#[parla::main]
async fn main() -> parla::Result<()> {
    let t = TaskSpace::new("Hello");
    task(async {
        println!(
            "Hello from {}, running on {}",
            current_task().expect("inside a task"),
            current_device()
        );
    })
    .id(t.at(0))
    .await?;
    Ok(())
}
