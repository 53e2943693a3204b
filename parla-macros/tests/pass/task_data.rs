//! `reads`, `writes` and `reads_writes` on `#[task]`: the named parameters are declared as
//! data, ordering the tasks by their accesses.

use parla::array::PArray;

#[parla::task(reads = [a], reads_writes = b, placement = [cpu, gpu])]
async fn add_into(a: PArray<f64, ndarray::Ix1>, b: PArray<f64, ndarray::Ix1>) -> parla::Result<()> {
    let x = a.read()?;
    let mut y = b.write()?;
    y.zip_mut_with(&*x, |y, x| *y += x);
    Ok(())
}

#[parla::task(writes = [out])]
async fn fill(out: PArray<f64, ndarray::Ix1>, v: f64) -> parla::Result<()> {
    out.write()?.fill(v);
    Ok(())
}

#[parla::main(cpu_threads = 2, virtual_gpus = 1)]
async fn main() -> parla::Result<()> {
    let a = PArray::from(ndarray::Array1::from_elem(4, 1.0));
    let b = PArray::zeros(4);
    fill(b.clone(), 5.0).spawn();
    // No `.after`: the accesses order the tasks.
    add_into(a.clone(), b.clone()).spawn();
    add_into(a.clone(), b.clone()).spawn();
    assert_eq!(b.to_host().await?.to_vec(), vec![7.0; 4]);
    Ok(())
}
