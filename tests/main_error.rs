//! `#[parla::main]` returning an error while a task still runs (a server's loop, a
//! heartbeat): the program reports the error and exits with status 1 at once. It waited for
//! the task first, for good, without a word.
//!
//! (No test harness: the function under the macro exits the process, so the test runs this
//! binary again as a child and checks how it ended.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[parla::main(cpu_threads = 2)]
async fn serve() -> Result<(), String> {
    parla::task(async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .spawn();
    Err("config missing".to_string())
}

fn main() {
    if std::env::var_os("PARLA_MAIN_ERROR_CHILD").is_some() {
        serve().unwrap();
        unreachable!("serve exits the process on its error");
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("PARLA_MAIN_ERROR_CHILD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the program did not exit in 60 s with its main's error");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("Error: config missing"), "stderr: {stderr}");
    println!("test main_error ... ok");
}
