use std::sync::Arc;

#[parla::task(placement = [cpu, gpu, gpu(1)], vcus = 0.5, memory = 1 << 20)]
async fn scale(v: Arc<Vec<f64>>, k: f64) -> Vec<f64> {
    v.iter().map(|x| x * k).collect()
}

#[parla::task]
async fn unit() {}

#[parla::task(vcus = 1)]
pub async fn whole() -> u8 {
    1
}

fn main() {
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .virtual_gpus(2, 1 << 30)
        .build()
        .unwrap();
    rt.block_on(async {
        let t = parla::TaskSpace::new("T");
        let a = scale(Arc::new(vec![1.0, 2.0]), 2.0).id(t.at(0)).spawn();
        let b = unit().after(t.at(0)).spawn();
        assert_eq!(a.await.unwrap(), vec![2.0, 4.0]);
        b.await.unwrap();
        assert_eq!(whole().await.unwrap(), 1);
    });
}
