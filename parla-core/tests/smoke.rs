use parla_core::*;

#[test]
fn smoke() {
    let rt = Runtime::builder().cpu_threads(2).build().unwrap();
    let v = rt.block_on(async {
        let t = TaskSpace::new("T");
        let a = task(async { 1 }).id(t.at(0)).spawn();
        let b = task(async { 2 }).id(t.at(1)).after(t.at(0)).spawn();
        let c = task(async { current_task().unwrap().to_string() })
            .id(t.at(("x", 1)))
            .after(t.range(0..2))
            .spawn();
        (a.await.unwrap(), b.await.unwrap(), c.await.unwrap())
    });
    assert_eq!(v, (1, 2, "Task(T[x, 1])".to_string()));
}

#[test]
fn many() {
    let rt = Runtime::builder().cpu_threads(2).build().unwrap();
    let t0 = std::time::Instant::now();
    rt.block_on(async {
        for _ in 0..100_000 {
            task(async {}).spawn();
        }
    });
    eprintln!("independent: {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let n = rt.block_on(async {
        let mut prev = task(async { 0u64 }).spawn();
        for _ in 0..100_000 {
            prev = task(async { 1u64 }).after(&prev).spawn();
        }
        prev.await.unwrap()
    });
    assert_eq!(n, 1);
    eprintln!("chain: {:?}", t0.elapsed());
}
