//! Function variants and `clone_here` on real GPUs: the GPU variant runs in GPU tasks,
//! data round trips host -> GPU -> host (and GPU -> other GPU) bit for bit, in every layout,
//! and `eigh` on cuSOLVER meets the same bounds as on the CPU.

mod support;

use std::sync::Arc;

use ndarray::{Array1, Array2, Array3, ArrayD, IxDyn, Order, s};
use parla::array::{DeviceArray, Here, clone_here};
use parla::linalg::{eigh, eigh_residual, random_symmetric};
use parla::prelude::*;
use support::gpu::real;

#[parla::specialize]
fn which() -> &'static str {
    "default"
}

#[parla::variant(which, gpu)]
fn which_gpu() -> &'static str {
    assert!(parla::gpu::current().is_some(), "a GPU context");
    "gpu"
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_tasks_run_the_gpu_variant() {
    let Some(rt) = real() else { return };
    let seen = support::within(60, move || {
        rt.block_on(async {
            let gpu = task(async {
                let before = which();
                // Awaiting a CPU child and coming back: still the GPU's.
                let child = task(async { which() }).await.unwrap();
                (before, child, which())
            })
            .placement(Placement::AnyGpu)
            .await
            .unwrap();
            (which(), task(async { which() }).await.unwrap(), gpu)
        })
    });
    assert_eq!(seen, ("default", "default", ("gpu", "default", "gpu")));
}

/// Bit patterns that a conversion would change: NaN payloads, signed zeros, subnormals.
fn awkward(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| match i % 5 {
            0 => f64::from_bits(0x7ff8_0000_dead_beef + i as u64),
            1 => -0.0,
            2 => f64::from_bits(i as u64 + 1),
            _ => (i as f64).sin() * 1e300,
        })
        .collect()
}

fn bits<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Vec<u64> {
    a.iter().map(|x| x.to_bits()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn host_to_gpu_to_host_keeps_every_bit() {
    let Some(rt) = real() else { return };
    let m = Array2::from_shape_vec((37, 53), awkward(37 * 53)).unwrap();
    let cube = Array3::from_shape_vec((3, 5, 7), awkward(105)).unwrap();
    let dynamic = ArrayD::from_shape_vec(IxDyn(&[2, 3, 2, 2]), awkward(24)).unwrap();
    let v = awkward(1001);
    let ints: Vec<i32> = (0..4097).map(|i| i * 7 - 5000).collect();
    let out = support::within(120, move || {
        rt.block_on(async move {
            let m = Arc::new(m);
            let on_gpu = {
                let (m, cube, dynamic, v, ints) = (
                    m.clone(),
                    cube.clone(),
                    dynamic.clone(),
                    v.clone(),
                    ints.clone(),
                );
                task(async move {
                    let strided = m.slice(s![1..;3, ..;2]);
                    let fortran = m.t();
                    let here = (
                        clone_here(&*m)?.into_owned(),
                        clone_here(&strided)?.into_owned(),
                        clone_here(&fortran)?.into_owned(),
                        clone_here(&cube)?.into_owned(),
                        clone_here(&dynamic)?.into_owned(),
                        clone_here(&v)?.into_owned(),
                        clone_here(&ints[..])?.into_owned(),
                    );
                    let all_device = !here.0.is_host()
                        && !here.1.is_host()
                        && !here.2.is_host()
                        && !here.3.is_host()
                        && !here.4.is_host()
                        && !here.5.is_host()
                        && !here.6.is_host();
                    let Here::Device(fd) = &here.2 else {
                        unreachable!()
                    };
                    let column_major = fd.is_column_major();
                    // Read back inside the GPU task too (on its stream).
                    let inside = bits(&here.1.to_host()?.into_owned()) == bits(&strided.to_owned());
                    Ok::<_, parla::Error>((here, all_device, column_major, inside))
                })
                .placement(Placement::AnyGpu)
                .await
                .unwrap()
                .unwrap()
            };
            let (here, all_device, column_major, inside) = on_gpu;
            // Back on the host, in a CPU task.
            let back = task(async move {
                Ok::<_, parla::Error>((
                    clone_here(&here.0)?.into_host()?,
                    clone_here(&here.1)?.into_host()?,
                    clone_here(&here.2)?.into_host()?,
                    clone_here(&here.3)?.into_host()?,
                    clone_here(&here.4)?.into_host()?,
                    clone_here(&here.5)?.into_host()?,
                    clone_here(&here.6)?.into_host()?,
                ))
            })
            .await
            .unwrap()
            .unwrap();
            (m, back, all_device, column_major, inside)
        })
    });
    let (m, back, all_device, column_major, inside) = out;
    assert!(
        all_device,
        "every input became a device array in the GPU task"
    );
    assert!(
        column_major,
        "a column-major view is copied as it is stored"
    );
    assert!(inside, "read back inside the GPU task");
    assert_eq!(bits(&back.0), bits(&*m));
    assert_eq!(bits(&back.1), bits(&m.slice(s![1..;3, ..;2]).to_owned()));
    assert_eq!(back.2.shape(), &[53, 37]);
    assert_eq!(
        bits(&back.2.as_standard_layout().into_owned()),
        bits(&m.t().to_owned())
    );
    assert_eq!(
        bits(&back.3),
        bits(&Array3::from_shape_vec((3, 5, 7), awkward(105)).unwrap())
    );
    assert_eq!(back.4.shape(), &[2, 3, 2, 2]);
    assert_eq!(bits(&back.4), bits(&Array1::from(awkward(24))));
    assert_eq!(bits(&back.5), bits(&Array1::from(awkward(1001))));
    assert_eq!(
        back.6.to_vec(),
        (0..4097).map(|i| i * 7 - 5000).collect::<Vec<i32>>()
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn device_data_is_shared_on_its_gpu_and_uploads_are_ordered() {
    let Some(rt) = real() else { return };
    let ok = support::within(120, move || {
        rt.block_on(async {
            // Many uploads in flight from one task reuse staging buffers only once their
            // copies finished: every array arrives intact.
            let arrays: Vec<DeviceArray<u64, ndarray::Ix1>> = task(async {
                let mut out = Vec::new();
                for k in 0..64u64 {
                    let host: Vec<u64> = (0..(1 << 16)).map(|i| i ^ (k << 40)).collect();
                    let Here::Device(d) = clone_here(&host)? else {
                        unreachable!()
                    };
                    out.push(d);
                }
                Ok::<_, parla::Error>(out)
            })
            .placement(Placement::Gpu(0))
            .await
            .unwrap()
            .unwrap();
            // On the same GPU, clone_here shares the buffer.
            let first = arrays[0].clone();
            let shared = task(async move {
                let here = clone_here(&first)?;
                let Here::Device(d) = &here else {
                    unreachable!()
                };
                Ok::<_, parla::Error>(std::ptr::eq(d.buffer(), first.buffer()))
            })
            .placement(Placement::Gpu(0))
            .await
            .unwrap()
            .unwrap();
            let intact = arrays.iter().enumerate().all(|(k, d)| {
                let host = d.to_host().unwrap();
                host.iter()
                    .enumerate()
                    .all(|(i, &x)| x == (i as u64) ^ ((k as u64) << 40))
            });
            (shared, intact)
        })
    });
    assert_eq!(ok, (true, true));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn from_buffer_checks_its_arguments() {
    let Some(rt) = real() else { return };
    let res = support::within(60, move || {
        rt.block_on(
            task(async {
                let gpu = parla::gpu::current().unwrap();
                let good = DeviceArray::from_buffer(
                    gpu.upload(&[1.0f64, 2.0, 3.0, 4.0])?,
                    (2, 2),
                    Order::ColumnMajor,
                )?;
                let wrong = DeviceArray::<f64, _>::from_buffer(
                    gpu.upload(&[1.0f64; 5])?,
                    (2, 2),
                    Order::RowMajor,
                );
                Ok::<_, parla::Error>((good.to_host()?, wrong.is_err()))
            })
            .placement(Placement::AnyGpu),
        )
    });
    let (good, wrong) = res.unwrap().unwrap();
    assert_eq!(good, ndarray::array![[1.0, 3.0], [2.0, 4.0]]);
    assert!(wrong, "5 elements are not a 2 x 2 matrix");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn eigh_on_the_gpu_meets_the_bounds() {
    let Some(rt) = real() else { return };
    let a = random_symmetric(300, 5);
    let a2 = a.clone();
    let res = support::within(120, move || {
        rt.block_on(async move {
            let gpu = task(async move {
                let here = clone_here(&a2)?;
                let e = eigh(&here)?;
                let device_side = !e.values.is_host() && !e.vectors.is_host();
                // Device input (row-major and column-major) goes through the same path.
                let fortran = a2.t().as_standard_layout().into_owned().reversed_axes();
                let e2 = eigh(&clone_here(&fortran)?)?;
                let e3 = eigh(&here)?;
                Ok::<_, parla::Error>((
                    e.into_host()?,
                    e2.into_host()?.0,
                    e3.into_host()?.0,
                    device_side,
                ))
            })
            .placement(Placement::AnyGpu)
            .await
            .unwrap();
            let cpu = task(async move { eigh(&clone_here(&a)?)?.into_host() })
                .await
                .unwrap();
            (gpu, cpu)
        })
    });
    let (gpu, cpu) = res;
    let ((w, v), w_fortran, w_again, device_side) = gpu.unwrap();
    let (w_cpu, _) = cpu.unwrap();
    assert!(device_side, "results stay on the GPU");
    let a = random_symmetric(300, 5);
    let r = eigh_residual(a.view(), w.view(), v.view()).unwrap();
    assert!(r < 1e-10, "GPU residual {r:e}");
    let max_diff = |x: &Array1<f64>, y: &Array1<f64>| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f64, f64::max)
    };
    assert!(max_diff(&w, &w_cpu) < 1e-8, "GPU and CPU eigenvalues agree");
    assert!(max_diff(&w, &w_fortran) < 1e-10, "column-major input");
    assert!(
        max_diff(&w, &w_again) < 1e-12,
        "the input is not overwritten"
    );
}

#[test]
#[ignore = "needs two CUDA GPUs"]
fn gpu_to_other_gpu_keeps_every_bit() {
    let Some(rt) = real() else { return };
    if rt.gpus() < 2 {
        eprintln!("skipped: needs 2 GPUs, found {}", rt.gpus());
        return;
    }
    let m = Array2::from_shape_vec((129, 65), awkward(129 * 65)).unwrap();
    let m2 = m.clone();
    let res = support::within(120, move || {
        rt.block_on(async move {
            let on0 = task(async move {
                let Here::Device(d) = clone_here(&m2)? else {
                    unreachable!()
                };
                Ok::<_, parla::Error>(d)
            })
            .placement(Placement::Gpu(0))
            .await
            .unwrap()?;
            let on1 = task(async move {
                let here = clone_here(&on0)?;
                let Here::Device(d) = &here else {
                    unreachable!()
                };
                // A copy on this GPU, not the other's buffer; read back here.
                Ok::<_, parla::Error>((d.device(), on0.device(), here.to_host()?.into_owned()))
            })
            .placement(Placement::Gpu(1))
            .await
            .unwrap()?;
            Ok::<_, parla::Error>(on1)
        })
    });
    let (dev1, dev0, back) = res.unwrap();
    assert_eq!((dev0, dev1), (Device::gpu(0), Device::gpu(1)));
    assert_eq!(bits(&back), bits(&m));
}
