//! PArray without CUDA (the CPU and virtual GPUs, which keep their own copies in host
//! memory): coherence, ordering by declared accesses, access errors, eviction, tiles.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ndarray::{Array1, Array2, array};
use parla::array::PArray;
use parla::prelude::*;

const MIB: u64 = 1 << 20;

#[test]
fn copies_follow_the_writer_and_reads_see_the_last_write() {
    let rt = support::vgpu(2, 2, MIB);
    let a = PArray::from(Array1::from_vec((0..100u64).collect()));
    let (seen, where_valid) = support::within(60, move || {
        rt.block_on(async move {
            let mut where_valid = Vec::new();
            // CPU, then gpu 0, then gpu 1 add 1, 10, 100; each reads what the last wrote.
            for (k, p) in [
                (1, Placement::Cpu),
                (10, Placement::Gpu(0)),
                (100, Placement::Gpu(1)),
            ] {
                let b = a.clone();
                task(async move {
                    b.write()?.mapv_inplace(|x| x + k);
                    Ok::<_, parla::Error>(())
                })
                .reads_writes(&a)
                .placement(p)
                .await??;
                where_valid.push(a.valid_devices());
            }
            // Two readers on different devices: both copies valid afterwards.
            let (b, c) = (a.clone(), a.clone());
            let r0 = task(async move { Ok::<_, parla::Error>(b.read()?.sum()) })
                .reads(&a)
                .placement(Placement::Gpu(0))
                .spawn();
            let r1 = task(async move { Ok::<_, parla::Error>(c.read()?.sum()) })
                .reads(&a)
                .placement(Placement::Cpu)
                .spawn();
            let sums = (r0.await??, r1.await??);
            where_valid.push(a.valid_devices());
            let host = a.to_host().await?;
            Ok::<_, parla::Error>(((sums, host), where_valid))
        })
        .unwrap()
    });
    let want: u64 = (0..100u64).map(|x| x + 111).sum();
    assert_eq!(seen.0, (want, want));
    assert_eq!(
        seen.1,
        Array1::from_vec((0..100u64).map(|x| x + 111).collect())
    );
    assert_eq!(where_valid[0], vec![Device::CPU]);
    assert_eq!(
        where_valid[1],
        vec![Device::gpu(0)],
        "the writer's copy only"
    );
    assert_eq!(where_valid[2], vec![Device::gpu(1)]);
    let mut shared = where_valid[3].clone();
    shared.sort_by_key(|d| d.to_string());
    assert_eq!(shared, vec![Device::CPU, Device::gpu(0), Device::gpu(1)]);
}

#[test]
fn accesses_order_tasks_in_spawn_order_without_after() {
    let rt = support::vgpu(2, 2, MIB);
    let log = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let l2 = log.clone();
    let out = support::within(60, move || {
        rt.block_on(async move {
            let a = PArray::from(array![0u64]);
            let places = [Placement::Cpu, Placement::Gpu(0), Placement::Gpu(1)];
            // w0 r1 r2 w3 r4: reads between writes see the write before them, and w3 waits
            // for both readers.
            let mut hs = Vec::new();
            for (i, write) in [true, false, false, true, false].into_iter().enumerate() {
                let (b, log) = (a.clone(), l2.clone());
                let t = task(async move {
                    if write {
                        // Slow writers: a missing order would show.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        b.write()?[0] = i as u64 + 1;
                    }
                    let v = b.read()?[0];
                    log.lock().push((i, v));
                    Ok::<_, parla::Error>(v)
                })
                .placement(places[i % 3]);
                let t = if write {
                    t.reads_writes(&a)
                } else {
                    t.reads(&a)
                };
                hs.push(t.spawn());
            }
            let mut vs = Vec::new();
            for h in hs {
                vs.push(h.await.unwrap().unwrap());
            }
            vs
        })
    });
    assert_eq!(out, vec![1, 1, 1, 4, 4]);
    let log = log.lock();
    let pos = |i| log.iter().position(|&(j, _)| j == i).unwrap();
    assert!(pos(0) < pos(1) && pos(0) < pos(2));
    assert!(pos(1) < pos(3) && pos(2) < pos(3) && pos(3) < pos(4));
}

#[test]
fn undeclared_and_read_only_uses_are_errors() {
    let rt = support::vgpu(2, 1, MIB);
    let a = PArray::from(array![1.0f64, 2.0]);
    let b = PArray::from(array![3.0f64]);
    let errs = support::within(60, move || {
        rt.block_on(async move {
            let (a2, b2) = (a.clone(), b.clone());
            let undeclared = task(async move { b2.read().map(|_| ()) })
                .reads(&a2)
                .await
                .unwrap();
            let a3 = a.clone();
            let read_only = task(async move { a3.write().map(|_| ()) })
                .reads(&a)
                .placement(Placement::AnyGpu)
                .await
                .unwrap();
            let a4 = a.clone();
            let twice = task(async move {
                let w = a4.write()?;
                let again = a4.read().map(|_| ());
                drop(w);
                Ok::<_, parla::Error>(again)
            })
            .reads_writes(&a)
            .await
            .unwrap()
            .unwrap();
            let outside = a.read().map(|_| ());
            let a5 = a.clone();
            let spawned = task(async move {
                // A future given to `tokio::spawn` is not the task that declared the array.
                tokio::spawn(async move { a5.read().map(|_| ()) })
                    .await
                    .unwrap()
            })
            .reads(&a)
            .await
            .unwrap();
            (undeclared, read_only, twice, outside, spawned)
        })
    });
    fn msg(r: &Result<(), parla::Error>) -> String {
        r.as_ref().err().map(|e| e.to_string()).unwrap_or_default()
    }
    assert!(msg(&errs.0).contains("did not declare"), "{}", msg(&errs.0));
    assert!(msg(&errs.1).contains("read-only"), "{}", msg(&errs.1));
    assert!(
        msg(&errs.2).contains("borrowed mutably"),
        "{}",
        msg(&errs.2)
    );
    assert!(msg(&errs.3).contains("inside a task"), "{}", msg(&errs.3));
    assert!(msg(&errs.4).contains("tokio::spawn"), "{}", msg(&errs.4));
}

#[test]
fn a_full_gpu_evicts_unused_copies_and_writes_back_the_only_valid_one() {
    // Room for two arrays of 64 KiB on the virtual GPU.
    let n = 8192usize;
    let rt = support::vgpu(2, 1, 2 * (n as u64) * 8);
    let arrays: Vec<PArray<u64, _>> = (0..5u64)
        .map(|k| PArray::from(Array1::from_elem(n, k)))
        .collect();
    let usage_ok = support::within(60, move || {
        rt.block_on(async {
            // Each GPU task writes its array: after it, the GPU copy is the only valid one.
            for (k, a) in arrays.iter().enumerate() {
                let b = a.clone();
                task(async move {
                    b.write()?.mapv_inplace(|x| x * 10 + k as u64);
                    Ok::<_, parla::Error>(())
                })
                .reads_writes(a)
                .placement(Placement::Gpu(0))
                .await
                .unwrap()
                .unwrap();
                let used = rt.usage(Device::gpu(0)).unwrap().mem;
                assert!(used <= 2 * (n as u64) * 8, "budget kept: {used}");
            }
            let mut back = Vec::new();
            for a in &arrays {
                back.push(a.to_host().await.unwrap());
            }
            let resident: u64 = arrays
                .iter()
                .filter(|a| a.valid_devices().contains(&Device::gpu(0)))
                .map(|a| a.bytes())
                .sum();
            (back, resident, rt.usage(Device::gpu(0)).unwrap().mem)
        })
    });
    let (back, resident, used) = usage_ok;
    for (k, a) in back.iter().enumerate() {
        assert!(
            a.iter().all(|&x| x == k as u64 * 11),
            "array {k} written back intact"
        );
    }
    assert_eq!(
        resident, used,
        "the budget counts exactly the copies on the GPU"
    );
    assert!(resident <= 2 * (n as u64) * 8);
}

/// A full GPU evicts the copy used least recently, whether the copy was used again after
/// the last eviction or not: evictions take the copies in the order one look at them gave,
/// passing over those used since, which the next look places anew.
#[test]
fn a_full_gpu_evicts_the_copy_used_least_recently() {
    // Room for three arrays on the virtual GPU.
    let n = 1024usize;
    let bytes = (n * 8) as u64;
    let rt = support::vgpu(2, 1, 3 * bytes);
    let arrays: Vec<PArray<u64, _>> = (0..6u64)
        .map(|k| PArray::from(Array1::from_elem(n, k)))
        .collect();
    let on_gpu = support::within(60, move || {
        rt.block_on(async {
            let read = |k: usize| {
                let a = arrays[k].clone();
                task(async move { a.read().map(|v| v[0]) })
                    .reads(&arrays[k])
                    .placement(Placement::Gpu(0))
            };
            let held = || {
                (0..arrays.len())
                    .filter(|&k| arrays[k].valid_devices().contains(&Device::gpu(0)))
                    .collect::<Vec<_>>()
            };
            let mut seen = Vec::new();
            // A, B, C fill the GPU; A is used again; D evicts B.
            for k in [0, 1, 2, 0, 3] {
                assert_eq!(read(k).await.unwrap().unwrap(), k as u64);
            }
            seen.push(held());
            // C is used again (after the look that evicted B); E evicts A, F then D.
            for k in [2, 4] {
                assert_eq!(read(k).await.unwrap().unwrap(), k as u64);
            }
            seen.push(held());
            assert_eq!(read(5).await.unwrap().unwrap(), 5);
            seen.push(held());
            seen
        })
    });
    assert_eq!(on_gpu, vec![vec![0, 2, 3], vec![2, 3, 4], vec![2, 4, 5]]);
}

#[test]
fn data_too_big_for_every_device_is_unsatisfiable() {
    let rt = support::vgpu(2, 1, 1024);
    let a = PArray::from(Array1::<f64>::zeros(1024));
    let err = support::within(60, move || {
        rt.block_on(async move { task(async {}).reads(&a).placement(Placement::AnyGpu).await })
    })
    .unwrap_err();
    assert!(matches!(err, TaskError::Unsatisfiable { .. }), "{err}");
    assert!(err.to_string().contains("bytes of data"), "{err}");
}

/// The host's copies are not counted in the CPU's budget: a CPU task whose workspace alone
/// is too big is refused for its workspace, and its data is not named as part of the cause.
#[test]
fn on_the_cpu_only_the_workspace_counts_against_the_budget() {
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .gpus([])
        .cpu_memory(1000)
        .build()
        .expect("runtime");
    let a = PArray::from(Array1::<f64>::zeros(1000));
    let (b, b2) = (a.clone(), a.clone());
    let err = support::within(60, move || {
        rt.block_on(async move {
            // 8,000 bytes of data run within a budget of 1,000 bytes...
            let len = task(async move { Ok::<_, parla::Error>(b2.read()?.len()) })
                .reads(&b)
                .placement(Placement::Cpu)
                .await
                .expect("data is not counted on the CPU")
                .expect("the read");
            assert_eq!(len, 1000);
            // ...and 2,000 bytes of workspace do not.
            task(async {})
                .reads(&a)
                .memory(2000)
                .placement(Placement::Cpu)
                .await
        })
    })
    .unwrap_err();
    assert!(matches!(err, TaskError::Unsatisfiable { .. }), "{err}");
    assert!(
        err.to_string().contains("memory = 2000 bytes exceeds"),
        "{err}"
    );
    assert!(!err.to_string().contains("of data"), "{err}");
}

/// A GPU task that holds a copy awaits a child whose data cannot fit beside it: the child
/// never runs, and the parent's await fails with a `Deadlock` whose reason says the child
/// waits for room for its data (not for the 0 VCUs and 0 bytes of workspace it asks).
#[test]
fn a_deadlock_on_data_says_the_child_waits_for_room_for_its_data() {
    let n = 100;
    let rt = support::vgpu(2, 1, (n * 8) as u64);
    let a = PArray::from(Array1::<f64>::from_elem(n, 1.0));
    let b = PArray::from(Array1::<f64>::from_elem(n, 2.0));
    let r = support::within(60, move || {
        rt.block_on(async move {
            let (a2, b2) = (a.clone(), b.clone());
            task(async move {
                let _x = a2.read()?[0];
                let child = task(async move { Ok::<_, parla::Error>(b2.read()?[0]) })
                    .reads(&b)
                    .vcus(0.5)
                    .placement(Placement::Gpu(0))
                    .spawn();
                Ok::<_, parla::Error>(child.await)
            })
            .reads(&a)
            .vcus(0.5)
            .placement(Placement::Gpu(0))
            .await
        })
    });
    let err = r
        .expect("the parent ran")
        .expect("the parent read its data")
        .unwrap_err();
    assert!(matches!(err, TaskError::Deadlock { .. }), "{err}");
    assert!(err.to_string().contains("room for its data"), "{err}");
}

/// `tiles()` copies the host data outside the order of the tasks: while a task that writes
/// the array runs (holding its view, half written) or waits, it is an error, not a copy of
/// half-written data; after the writer finished it copies its result; after a writer
/// failed, it fails as a reader would. (It copied the half-written rows.)
#[test]
fn tiles_refuse_a_writer_not_finished_and_a_failed_one() {
    let rt = support::cpu(2);
    let out = support::within(60, move || {
        rt.block_on(async move {
            let a = PArray::from(Array2::<f64>::zeros((4, 4)));
            let (half_tx, half_rx) = tokio::sync::oneshot::channel::<()>();
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let b = a.clone();
            let writer = task(async move {
                let mut w = b.write()?;
                w.row_mut(0).fill(1.0);
                w.row_mut(1).fill(1.0);
                half_tx.send(()).expect("test alive");
                go_rx.await.expect("test alive");
                w.row_mut(2).fill(1.0);
                w.row_mut(3).fill(1.0);
                Ok::<_, parla::Error>(())
            })
            .writes(&a)
            .spawn();
            half_rx.await.expect("writer runs");
            let running = a.tiles(2, 2);
            assert!(
                matches!(&running, Err(parla::Error::InvalidArgument(m)) if m.contains("has not finished")),
                "tiles() beside a running writer: {:?}",
                running.map(|_| ())
            );
            go_tx.send(()).expect("writer alive");
            writer.await??;
            let done = a.tiles(2, 2)?.to_host().await?;
            assert_eq!(done, Array2::<f64>::ones((4, 4)));

            // A writer waiting behind a gate.
            let gate = task(tokio::time::sleep(Duration::from_millis(20))).spawn();
            let b = a.clone();
            let queued = task(async move {
                b.write()?.fill(2.0);
                Ok::<_, parla::Error>(())
            })
            .writes(&a)
            .after(&gate)
            .spawn();
            assert!(matches!(
                a.tiles(2, 2),
                Err(parla::Error::InvalidArgument(_))
            ));
            queued.await??;
            assert_eq!(a.tiles(4, 4)?.to_host().await?, Array2::from_elem((4, 4), 2.0));

            // A writer that failed while it wrote.
            let b = a.clone();
            let failed = task(async move {
                b.write().expect("declared").fill(3.0);
                panic!("a writer that fails");
            })
            .writes(&a)
            .spawn();
            assert!(failed.await.is_err());
            match a.tiles(2, 2) {
                Err(parla::Error::Task(TaskError::DependencyFailed { dependency, .. })) => {
                    assert_eq!(dependency, failed_name(&a).await)
                }
                other => panic!("tiles() after a failed writer: {:?}", other.map(|_| ())),
            }
            Ok::<_, parla::Error>(())
        })
    });
    out.expect("tiles");
}

/// The writer a reader of `a` fails on (its `DependencyFailed` names it).
async fn failed_name(a: &PArray<f64, ndarray::Ix2>) -> String {
    match a.to_host().await {
        Err(parla::Error::Task(TaskError::DependencyFailed { dependency, .. })) => dependency,
        other => panic!("to_host after a failed writer: {:?}", other.map(|_| ())),
    }
}

#[test]
#[should_panic(expected = "too large: its size overflows isize")]
fn zeros_of_a_shape_whose_size_overflows_panics_as_ndarray_does() {
    // (The count wraps to 16 in `usize`: an array of 16 elements behind a view of this
    // shape would be read and written out of bounds.)
    let _ = PArray::<f64, _>::zeros(((1usize << 63) + 1, 16));
}

#[test]
#[should_panic(expected = "overflows isize")]
fn zeros_with_an_empty_axis_beside_one_too_long_panics_as_ndarray_does() {
    // (Accepted before: every view of it then panicked inside ndarray.)
    let _ = PArray::<f64, _>::zeros((usize::MAX, 0));
}

#[test]
fn tiles_too_large_or_too_many_are_errors_and_a_tile_is_at_most_the_array() {
    let e = parla::array::Tiles::<f64>::zeros((usize::MAX, 16), (1 << 62, 16)).unwrap_err();
    assert!(e.to_string().contains("overflows isize"), "{e}");
    let e = parla::array::Tiles::<f64>::zeros((usize::MAX, usize::MAX), (1, 1)).unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    let e = parla::array::Tiles::<f64>::zeros((1 << 31, 1 << 31), (1, 1)).unwrap_err();
    assert!(
        e.to_string().contains("more tiles than a vector holds"),
        "{e}"
    );
    // An axis of length 0 beside one too long for ndarray: an error, as ndarray's panic;
    // beside a long one that fits, no tiles (and no loop over the long axis).
    let e = parla::array::Tiles::<f64>::zeros((usize::MAX, 0), (1, 1)).unwrap_err();
    assert!(e.to_string().contains("overflows isize"), "{e}");
    let t = parla::array::Tiles::<f64>::zeros((1 << 40, 0), (1, 1)).unwrap();
    assert_eq!((t.rows() * t.cols(), t.shape()), (0, (1 << 40, 0)));
    let t = parla::array::Tiles::<f64>::zeros((4, 4), (8, 8)).unwrap();
    assert_eq!((t.rows(), t.cols(), t.tile_shape()), (1, 1, (4, 4)));
    assert_eq!(t.get(0, 0).shape(), &[4, 4]);
    let t = PArray::from(Array2::<f64>::zeros((5, 3)))
        .tiles(8, 2)
        .unwrap();
    assert_eq!((t.rows(), t.cols(), t.tile_shape()), (1, 2, (5, 2)));
}

#[test]
fn tiles_are_arrays_of_their_own_and_assemble() {
    let rt = support::vgpu(2, 2, MIB);
    let m = Array2::from_shape_fn((10, 7), |(i, j)| (i * 7 + j) as f64);
    let a = PArray::from(m.clone());
    let out = support::within(60, move || {
        rt.block_on(async move {
            let t = a.tiles(4, 3)?;
            assert_eq!((t.rows(), t.cols()), (3, 3));
            assert_eq!(t.get(2, 2).shape(), &[2, 1]);
            // Negate every tile, on devices in turn.
            for (k, tile) in t.iter().enumerate() {
                let b = tile.clone();
                task(async move {
                    b.write()?.mapv_inplace(|x| -x);
                    Ok::<_, parla::Error>(())
                })
                .reads_writes(tile)
                .placement([Placement::Cpu, Placement::Gpu(0), Placement::Gpu(1)][k % 3])
                .spawn();
            }
            let whole = t.to_host().await?;
            let untouched = a.to_host().await?;
            Ok::<_, parla::Error>((whole, untouched))
        })
    })
    .unwrap();
    assert_eq!(out.0, -&m);
    assert_eq!(out.1, m, "the array the tiles came from is unchanged");
}

#[test]
fn a_failed_writer_fails_later_users_of_its_data() {
    let rt = support::vgpu(2, 1, MIB);
    let a = PArray::from(array![1u32]);
    let res = support::within(60, move || {
        rt.block_on(async move {
            let w = task(async { panic!("writer fails") }).writes(&a).spawn();
            let b = a.clone();
            let r = task(async move { b.read().map(|v| v[0]) }).reads(&a).await;
            (w.await.is_err(), r)
        })
    });
    assert!(res.0);
    assert!(
        matches!(res.1, Err(TaskError::DependencyFailed { .. })),
        "{:?}",
        res.1
    );
}

/// Readers that fail (a panic after reading, an abort before starting, on the CPU and on a
/// virtual GPU) change nothing: the next writer still waits for them, then runs, and later
/// readers and `to_host` see its data.
#[test]
fn failed_readers_leave_their_data_usable() {
    let rt = support::vgpu(2, 1, MIB);
    let a = PArray::from(array![1u32, 2]);
    let res = support::within(60, move || {
        rt.block_on(async move {
            let done = Arc::new(AtomicUsize::new(0));
            let mut readers = Vec::new();
            for place in [Placement::Cpu, Placement::AnyGpu] {
                let (b, d) = (a.clone(), done.clone());
                readers.push(
                    task(async move {
                        let sum: u32 = b.read()?.sum();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        d.fetch_add(1, Ordering::SeqCst);
                        panic!("reader fails after reading {sum}");
                        #[allow(unreachable_code)]
                        Ok::<_, parla::Error>(())
                    })
                    .reads(&a)
                    .placement(place)
                    .spawn(),
                );
            }
            // (Behind a gate, so that no worker starts it before the abort.)
            let (open, shut) = tokio::sync::oneshot::channel::<()>();
            let gate = task(async move { shut.await.is_ok() }).spawn();
            let aborted = task(async { Ok::<_, parla::Error>(()) })
                .reads(&a)
                .after(&gate)
                .spawn();
            aborted.abort();
            let _ = open.send(());
            let (b, d) = (a.clone(), done.clone());
            let writer = task(async move {
                // Both failing readers finished before this writer started.
                let seen = d.load(Ordering::SeqCst);
                b.write()?.fill(7);
                Ok::<_, parla::Error>(seen)
            })
            .writes(&a)
            .spawn();
            let b = a.clone();
            let reader = task(async move { Ok::<_, parla::Error>(b.read()?.sum()) })
                .reads(&a)
                .placement(Placement::AnyGpu)
                .spawn();
            let mut failed = 0;
            for r in readers {
                failed += r.await.is_err() as usize;
            }
            let aborted = aborted.await;
            let seen = writer.await.map(Result::ok);
            let sum: Result<Option<u32>, _> = reader.await.map(Result::ok);
            let host = a.to_host().await.map(|v| v.to_vec());
            (failed, aborted, seen, sum, host)
        })
    });
    assert_eq!(res.0, 2, "both readers failed");
    assert!(
        matches!(res.1, Err(TaskError::Aborted { .. })),
        "{:?}",
        res.1
    );
    assert_eq!(res.2, Ok(Some(2)), "the writer ran after both readers");
    assert_eq!(res.3, Ok(Some(14)));
    assert_eq!(res.4.ok(), Some(vec![7, 7]));
}

/// One array used by runtimes one after the other (one per test, or per phase of a
/// program): what the first wrote last, on the CPU or on a GPU, the next one reads, on
/// either; a writer the first runtime's drop cancelled fails the next users.
#[test]
fn an_array_outlives_the_runtime_that_wrote_it() {
    let r = support::within(60, || {
        let a = PArray::from(array![1u32, 2, 3]);
        let mut seen = Vec::new();
        for (i, place) in [Placement::AnyGpu, Placement::Cpu, Placement::AnyGpu]
            .into_iter()
            .enumerate()
        {
            let rt = support::vgpu(2, 1, MIB);
            let (a2, b) = (a.clone(), a.clone());
            let wrote = rt.block_on(async move {
                task(async move {
                    b.write()?.mapv_inplace(|x| x * 10);
                    Ok::<_, parla::Error>(())
                })
                .reads_writes(&a2)
                .placement(place)
                .await
            });
            assert!(matches!(wrote, Ok(Ok(()))), "round {i}: {wrote:?}");
            drop(rt);
            let rt = support::vgpu(2, 1, MIB);
            let (a2, b) = (a.clone(), a.clone());
            let on_gpu = rt.block_on(async move {
                task(async move { Ok::<_, parla::Error>(b.read()?.sum()) })
                    .reads(&a2)
                    .placement(Placement::AnyGpu)
                    .await
            });
            let host = rt.block_on(a.to_host()).map(|v| v.to_vec());
            seen.push((on_gpu.map(Result::ok), host.ok()));
        }
        // A writer still running when its runtime is dropped leaves the data unknown.
        let rt = support::vgpu(2, 1, MIB);
        let b = a.clone();
        let (started, wait) = std::sync::mpsc::channel();
        let w = rt.handle().spawn(
            task(async move {
                b.write()?.fill(0);
                let _ = started.send(());
                std::future::pending::<()>().await;
                Ok::<_, parla::Error>(())
            })
            .reads_writes(&a)
            .placement(Placement::AnyGpu),
        );
        wait.recv().unwrap();
        drop(rt);
        let rt = support::vgpu(2, 1, MIB);
        let after = rt.block_on(a.to_host()).map(|v| v.to_vec());
        (seen, futures_util::FutureExt::now_or_never(w), after)
    });
    let sums = [60, 600, 6000];
    for (i, (on_gpu, host)) in r.0.iter().enumerate() {
        assert_eq!(on_gpu, &Ok(Some(sums[i])), "round {i}");
        let x = 10u32.pow(i as u32 + 1);
        assert_eq!(host, &Some(vec![x, 2 * x, 3 * x]), "round {i}");
    }
    assert!(
        matches!(r.1, Some(Err(TaskError::Cancelled { .. }))),
        "{:?}",
        r.1
    );
    assert!(
        matches!(
            &r.2,
            Err(parla::Error::Task(TaskError::DependencyFailed { .. }))
        ),
        "{:?}",
        r.2
    );
}

/// Two runtimes alive at once: while the first holds copies of an array on its (virtual)
/// GPU, a task of the second that declares the array fails with `WrongRuntime` at once,
/// and the array goes on for the first; once the first is dropped, the second uses it.
/// (The second's task took the place of the array's last writer before it failed, and
/// every later user failed with it, in both runtimes.)
#[test]
fn a_task_of_a_second_runtime_leaves_the_array_to_the_first() {
    let r = support::within(60, || {
        let a = PArray::from(array![1u32, 2, 3]);
        let first = support::vgpu(2, 1, MIB);
        let b = a.clone();
        let wrote = first.block_on(
            task(async move {
                b.write()?.mapv_inplace(|x| x * 10);
                Ok::<_, parla::Error>(())
            })
            .reads_writes(&a)
            .placement(Placement::AnyGpu),
        );
        assert!(matches!(wrote, Ok(Ok(()))), "{wrote:?}");
        let second = support::vgpu(2, 1, MIB);
        let b = a.clone();
        let refused = second.block_on(
            task(async move {
                b.write()?.fill(0);
                Ok::<_, parla::Error>(())
            })
            .writes(&a),
        );
        let first_reads = first.block_on(a.to_host()).map(|v| v.to_vec());
        drop(first);
        let second_reads = second.block_on(a.to_host()).map(|v| v.to_vec());
        (refused, first_reads, second_reads)
    });
    assert!(
        matches!(&r.0, Err(TaskError::WrongRuntime { reason, .. }) if reason.contains("another parla runtime")),
        "{:?}",
        r.0
    );
    assert_eq!(r.1.ok(), Some(vec![10, 20, 30]));
    assert_eq!(r.2.ok(), Some(vec![10, 20, 30]));
}

/// Two runtimes alive at once, on the CPU alone: while a task of the first that writes an
/// array runs, a task of the second that writes it fails with `WrongRuntime` at its spawn,
/// naming the first's task, and the array goes on for the first. (The second's task took
/// the place of the array's last writer before it failed, and the first's `to_host` failed
/// with it, `DependencyFailed`.)
#[test]
fn a_task_of_a_second_runtime_leaves_an_array_in_use_on_the_cpu_to_the_first() {
    let r = support::within(60, || {
        let a = PArray::from(array![1u32, 2, 3]);
        let first = support::cpu(2);
        let second = support::cpu(2);
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        let b = a.clone();
        let writing = first.handle().spawn(
            task(async move {
                b.write()?.mapv_inplace(|x| x * 10);
                started_tx.send(()).unwrap();
                let _ = go_rx.await;
                Ok::<_, parla::Error>(())
            })
            .reads_writes(&a),
        );
        started.recv().unwrap();
        let b = a.clone();
        let refused = second.block_on(
            task(async move {
                b.write()?.fill(0);
                Ok::<_, parla::Error>(())
            })
            .reads_writes(&a),
        );
        go.send(()).unwrap();
        let wrote = first.block_on(writing);
        let first_reads = first.block_on(a.to_host()).map(|v| v.to_vec());
        (refused, wrote, first_reads)
    });
    assert!(
        matches!(&r.0, Err(TaskError::WrongRuntime { reason, .. }) if reason.contains("in use by task #")),
        "{:?}",
        r.0
    );
    assert!(matches!(r.1, Ok(Ok(()))), "{:?}", r.1);
    assert_eq!(r.2.ok(), Some(vec![10, 20, 30]));
}

/// A writer that fails at its spawn (constraints no device meets) is still the array's
/// last writer: later readers and `to_host` fail with it instead of reading the data
/// from before it.
#[test]
fn a_writer_failing_at_its_spawn_fails_later_users() {
    let rt = support::cpu(2);
    let a = PArray::from(array![1u32]);
    let r = support::within(60, move || {
        rt.block_on(async move {
            let b = a.clone();
            let w = task(async move {
                b.write()?.fill(5);
                Ok::<_, parla::Error>(())
            })
            .writes(&a)
            .memory(u64::MAX / 2)
            .spawn();
            let b = a.clone();
            let r = task(async move { Ok::<_, parla::Error>(b.read()?[0]) })
                .reads(&a)
                .await;
            (w.await, r, a.to_host().await.map(|v| v[0]))
        })
    });
    assert!(
        matches!(r.0, Err(TaskError::Unsatisfiable { .. })),
        "{:?}",
        r.0
    );
    assert!(
        matches!(r.1, Err(TaskError::DependencyFailed { .. })),
        "{:?}",
        r.1
    );
    assert!(
        matches!(
            r.2,
            Err(parla::Error::Task(TaskError::DependencyFailed { .. }))
        ),
        "{:?}",
        r.2
    );
}

/// A reader the writer also names with `.after` is a dependency like any other: its
/// failure fails the writer.
#[test]
fn a_failed_reader_named_with_after_still_fails_the_writer() {
    let rt = support::cpu(2);
    let a = PArray::from(array![1u32]);
    let r = support::within(60, move || {
        rt.block_on(async move {
            let t = TaskSpace::new("R");
            let b = a.clone();
            task(async move {
                let _ = b.read()?;
                panic!("reader fails");
                #[allow(unreachable_code)]
                Ok::<_, parla::Error>(())
            })
            .id(t.at(0))
            .reads(&a)
            .spawn();
            let b = a.clone();
            task(async move {
                b.write()?.fill(5);
                Ok::<_, parla::Error>(())
            })
            .writes(&a)
            .after(t.at(0))
            .await
        })
    });
    assert!(
        matches!(r, Err(TaskError::DependencyFailed { .. })),
        "{r:?}"
    );
}

#[test]
fn parents_with_data_awaiting_children_with_data_lend_their_vcus() {
    // Default VCUs on 2 workers: two parents fill the CPU; their children only run because
    // the parents lend their VCUs while they wait.
    let rt = support::cpu(2);
    let parents: Vec<PArray<u64, _>> = (0..4).map(|_| PArray::from(array![0u64])).collect();
    let children: Vec<PArray<u64, _>> = (0..4).map(|_| PArray::from(array![0u64])).collect();
    let sums = support::within(60, move || {
        rt.block_on(async {
            let mut hs = Vec::new();
            for (p, c) in parents.iter().zip(&children) {
                let (p2, c2) = (p.clone(), c.clone());
                hs.push(
                    task(async move {
                        let c3 = c2.clone();
                        task(async move {
                            c3.write()?[0] = 20;
                            Ok::<_, parla::Error>(())
                        })
                        .writes(&c2)
                        .await??;
                        p2.write()?[0] = 1;
                        Ok::<_, parla::Error>(())
                    })
                    .reads_writes(p)
                    .spawn(),
                );
            }
            for h in hs {
                h.await.unwrap().unwrap();
            }
            let mut total = 0;
            for a in parents.iter().chain(&children) {
                total += a.to_host().await.unwrap()[0];
            }
            total
        })
    });
    assert_eq!(sums, 4 * 21);
}

/// Tasks that read data spread over free GPUs as tasks without data do: the mapping counts
/// the tasks waiting in a device's data queue, and `Runtime::usage` reports them. (It
/// counted only those waiting for admission, which tasks with data never do: 19 of 20
/// went to the first GPU, while the second sat idle.)
#[test]
fn tasks_with_data_waiting_for_a_gpu_count_as_its_load() {
    let rt = Arc::new(support::vgpu(2, 2, MIB));
    let a = PArray::from(Array1::<f64>::ones(100));
    let r = rt.clone();
    let (waiting, ran) = support::within(60, move || {
        let rt = r.clone();
        r.block_on(async move {
            // Valid on both GPUs: neither is nearer to the data.
            for g in 0..2 {
                let b = a.clone();
                task(async move { b.read().map(|_| ()) })
                    .reads(&a)
                    .placement(Placement::Gpu(g))
                    .await??;
            }
            let (open, gate) = tokio::sync::watch::channel(false);
            let mut hs = Vec::new();
            for _ in 0..20 {
                let (b, mut gate) = (a.clone(), gate.clone());
                hs.push(
                    task(async move {
                        b.read()?;
                        gate.wait_for(|open| *open).await.expect("gate");
                        Ok::<_, parla::Error>(current_device())
                    })
                    // One such task fits a GPU at a time.
                    .memory(MIB - 100_000)
                    .reads(&a)
                    .placement(Placement::AnyGpu)
                    .spawn(),
                );
            }
            // All 20 are mapped (each at its spawn): one runs on each GPU, the rest wait.
            let waiting: Vec<usize> = (0..2)
                .map(|g| rt.usage(Device::gpu(g)).expect("gpu").waiting)
                .collect();
            open.send(true).expect("tasks hold the gate");
            let mut ran = [0usize; 2];
            for h in hs {
                ran[h.await??.index() as usize] += 1;
            }
            Ok::<_, parla::Error>((waiting, ran))
        })
    })
    .expect("tasks succeed");
    assert_eq!(
        waiting.iter().sum::<usize>(),
        18,
        "waiting per GPU: {waiting:?}"
    );
    assert!(
        waiting.iter().all(|&w| w >= 5) && ran.iter().all(|&n| n >= 5),
        "waiting per GPU {waiting:?}, tasks run per GPU {ran:?}"
    );
    drop(rt);
}

/// `to_host` outside a runtime (here after the runtime that wrote the array was dropped)
/// says so, naming itself, not a task the program never spawned.
#[test]
fn to_host_outside_a_runtime_says_what_to_do() {
    let a = PArray::from(ndarray::Array1::<f64>::zeros(4));
    {
        let rt = support::cpu(2);
        let w = a.clone();
        rt.block_on(async {
            task(async move {
                w.write()?.fill(1.0);
                Ok::<_, parla::Error>(())
            })
            .writes(&a)
            .await
        })
        .unwrap()
        .unwrap();
    }
    let e = futures_util::FutureExt::now_or_never(a.to_host())
        .expect("an error at once")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("PArray::to_host") && e.contains("outside a parla runtime"),
        "{e}"
    );
    let rt = support::cpu(2);
    let back = rt.block_on(a.to_host()).unwrap();
    assert_eq!(back, ndarray::Array1::from_elem(4, 1.0));
}

/// An array of `n` ones that lives for good (as one in a `static` would).
fn leaked(n: usize) -> &'static PArray<f64, ndarray::Ix1> {
    Box::leak(Box::new(PArray::from(Array1::from_elem(n, 1.0))))
}

/// A view that outlives its task (returned by it: the array is `'static` here) keeps the
/// memory it points to, unchanged, while later tasks write the array (before, a writer on
/// another device freed the virtual GPU's copy under it, and reading the view crashed).
#[test]
fn a_view_returned_by_its_task_keeps_its_memory_while_the_array_goes_on() {
    let rt = support::vgpu(2, 1, 1 << 30);
    let a = leaked(1 << 16);
    let seen = support::within(60, move || {
        rt.block_on(async move {
            let on_gpu = task(async move { a.read() })
                .reads(a)
                .placement(Placement::Gpu(0))
                .await
                .unwrap()
                .unwrap();
            let on_cpu = task(async move { a.read() })
                .reads(a)
                .await
                .unwrap()
                .unwrap();
            // Writers on the CPU, then on the GPU: each drops the other copies.
            task(async move { a.write().map(|mut w| w.fill(2.0)) })
                .reads_writes(a)
                .await
                .unwrap()
                .unwrap();
            task(async move { a.write().map(|mut w| w.fill(3.0)) })
                .reads_writes(a)
                .placement(Placement::Gpu(0))
                .await
                .unwrap()
                .unwrap();
            let after = a.to_host().await.unwrap();
            // A writer on the GPU returning a read view of what it wrote: the array keeps
            // the write (before, the write-back was dropped with the copy).
            let written = task(async move {
                a.write()?.fill(7.0);
                a.read()
            })
            .reads_writes(a)
            .placement(Placement::Gpu(0))
            .await
            .unwrap()
            .unwrap();
            let later = a.to_host().await.unwrap();
            (on_gpu, on_cpu, after, written, later)
        })
    });
    let n = (1 << 16) as f64;
    let (on_gpu, on_cpu, after, written, later) = seen;
    assert_eq!(on_gpu.sum(), n, "the GPU copy as it was");
    assert_eq!(on_cpu.sum(), n, "the host copy as it was");
    assert_eq!(after.sum(), 3.0 * n, "the array went on");
    assert_eq!(written.sum(), 7.0 * n, "the writer's view");
    assert_eq!(later.sum(), 7.0 * n, "the write kept");
}

/// A mutable view that outlives its task may still write the memory it points to: the
/// array's data is lost, and later uses fail saying why. Views in a task that is aborted
/// or panics are dropped with it, before the data is released: nothing is lost then.
#[test]
fn a_mutable_view_that_outlives_its_task_loses_the_data_and_later_uses_fail() {
    let rt = support::vgpu(2, 1, 1 << 30);
    let a = leaked(64);
    let b = PArray::from(Array1::from_elem(64, 1.0));
    let (kept, err, b_after) = support::within(60, move || {
        rt.block_on(async move {
            let kept = task(async move { a.write() })
                .reads_writes(a)
                .placement(Placement::Gpu(0))
                .await
                .unwrap()
                .unwrap();
            let err = a.to_host().await.unwrap_err().to_string();
            // Views held by an aborted task and a panicked one: dropped with them.
            let b1 = b.clone();
            let held = task(async move {
                let r = b1.read().unwrap();
                std::future::pending::<()>().await;
                drop(r);
            })
            .reads(&b)
            .placement(Placement::Gpu(0))
            .spawn();
            tokio::time::sleep(Duration::from_millis(20)).await;
            held.abort();
            let _ = held.await;
            let b2 = b.clone();
            let panicked = task(async move {
                let _r = b2.read().unwrap();
                panic!("with a view");
            })
            .reads(&b)
            .await;
            assert!(panicked.is_err());
            let b3 = b.clone();
            task(async move { b3.write().map(|mut w| w.fill(5.0)) })
                .reads_writes(&b)
                .placement(Placement::Gpu(0))
                .await
                .unwrap()
                .unwrap();
            let b_after = b.to_host().await.unwrap();
            (kept, err, b_after)
        })
    });
    assert_eq!(kept.len(), 64, "the view is still usable");
    assert!(err.contains("data is lost"), "{err}");
    assert!(err.contains("outlived the task"), "{err}");
    assert_eq!(b_after.sum(), 5.0 * 64.0, "nothing lost");
}

/// A task declaring many arrays, each twice (read, then written): the two accesses of each
/// merge, past the length where duplicates are found through an index.
#[test]
fn many_arrays_declared_twice_each_merge_their_accesses() {
    let rt = support::cpu(2);
    let arrays: Vec<PArray<f64, ndarray::Ix1>> = (0..40)
        .map(|i| PArray::from(Array1::from_elem(4, i as f64)))
        .collect();
    let sums = support::within(60, move || {
        rt.block_on(async move {
            let mine = arrays.clone();
            let mut b = task(async move {
                for a in &mine {
                    a.write()?.map_inplace(|x| *x += 1.0);
                }
                Ok::<_, parla::Error>(())
            });
            for a in &arrays {
                b = b.reads(a);
            }
            for a in arrays.iter().rev() {
                b = b.writes(a);
            }
            b.await.unwrap().unwrap();
            let mut sums = Vec::new();
            for a in &arrays {
                sums.push(a.to_host().await.unwrap().sum());
            }
            sums
        })
    });
    let want: Vec<f64> = (0..40).map(|i| 4.0 * (i as f64 + 1.0)).collect();
    assert_eq!(sums, want);
}

/// A task's guards show their views with `{:?}`, as ndarray shows an array (a task that
/// fails may print what it read).
#[test]
fn guards_show_their_views() {
    let rt = support::cpu(1);
    let a = PArray::from(array![[1.5, 2.5], [3.5, 4.5]]);
    let shown = support::within(30, move || {
        rt.block_on(async move {
            let b = a.clone();
            task(async move {
                let read = format!("{:?}", b.read()?);
                let mut w = b.write()?;
                w[[0, 0]] = 9.5;
                Ok::<_, parla::Error>((read, format!("{w:?}")))
            })
            .reads_writes(&a)
            .await?
        })
        .unwrap()
    });
    assert!(
        shown.0.contains("[[1.5, 2.5],") && shown.0.contains("shape=[2, 2]"),
        "{}",
        shown.0
    );
    assert!(shown.1.contains("[[9.5, 2.5],"), "{}", shown.1);
}
