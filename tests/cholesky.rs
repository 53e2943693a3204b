//! Tiled Cholesky on the task graph: the factor meets the residual bound on the CPU, on
//! virtual GPUs (tiles moving between devices), with the default placement, on real GPUs;
//! a matrix that is not positive definite and bad tilings are errors, never hangs.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::Array2;
use parla::array::PArray;
use parla::linalg::cholesky::{
    block_cyclic, cholesky, cholesky_residual, spd_entry, spd_matrix, spd_tiles,
};
use parla::{Device, Placement, Placements};

const MIB: u64 = 1 << 20;

/// Factors the test matrix of order `n` in `block` tiles placed by `place` on `rt`;
/// returns the residual, the number of tasks reported, and where each tile of `L` is valid.
fn factor(
    rt: parla::Runtime,
    n: usize,
    block: usize,
    place: impl Fn(usize, usize) -> Placements + Clone + Send + 'static,
) -> (f64, usize, Vec<Vec<Device>>) {
    let tasks = Arc::new(AtomicUsize::new(0));
    let seen = tasks.clone();
    let (l, valid) = support::within(120, move || {
        rt.block_on(async move {
            let tiles = spd_tiles(n, block, 5, place.clone()).await?;
            cholesky(&tiles, place, |done, total| {
                assert!(done <= total);
                seen.store(total, Ordering::Relaxed);
            })
            .await?;
            let valid: Vec<Vec<Device>> = tiles.iter().map(|t| t.valid_devices()).collect();
            Ok::<_, parla::Error>((tiles.to_host().await?, valid))
        })
        .expect("cholesky")
    });
    let r = cholesky_residual(spd_matrix(n, 5).view(), l.view()).expect("residual");
    (r, tasks.load(Ordering::Relaxed), valid)
}

/// Tasks of a `t x t` tiling: potrf, trtri, trsm, syrk and gemm.
fn tasks_of(t: usize) -> usize {
    2 * t + 2 * (t * (t - 1) / 2) + t * (t - 1) * (t - 2) / 6
}

#[test]
fn cpu_tiles_factor_to_the_residual_bound() {
    let cpu = |_: usize, _: usize| Placements::CPU;
    let (r, tasks, _) = factor(support::cpu(2), 512, 128, cpu);
    assert!(r < 1e-12, "||A - L L^T|| / ||A|| = {r}");
    assert_eq!(tasks, tasks_of(4));
}

#[test]
fn a_last_partial_tile_is_factored_too() {
    let cpu = |_: usize, _: usize| Placements::CPU;
    let (r, tasks, _) = factor(support::cpu(2), 500, 128, cpu);
    assert!(r < 1e-12, "||A - L L^T|| / ||A|| = {r}");
    assert_eq!(tasks, tasks_of(4));
}

#[test]
fn tiles_on_two_virtual_gpus_move_between_them() {
    let rt = support::vgpu(2, 2, 64 * MIB);
    let (r, _, valid) = factor(rt, 512, 128, block_cyclic(2));
    assert!(r < 1e-12, "||A - L L^T|| / ||A|| = {r}");
    // Rows over two GPUs (0, 1, 1, 0): each tile of L was last written on its row's GPU;
    // the read task that gathered L made the host copy valid too.
    for (idx, v) in valid.iter().enumerate() {
        let (i, j) = (idx / 4, idx % 4);
        if j <= i {
            let gpu = [0, 1, 1, 0][i];
            assert!(
                v.contains(&Device::gpu(gpu)),
                "tile ({i}, {j}) valid on {v:?}"
            );
        }
    }
}

#[test]
fn the_default_placement_lets_the_mapping_choose() {
    let rt = support::vgpu(2, 2, 64 * MIB);
    let any = |_: usize, _: usize| {
        [Placement::Cpu, Placement::AnyGpu]
            .into_iter()
            .collect::<Placements>()
    };
    let (r, _, _) = factor(rt, 384, 128, any);
    assert!(r < 1e-12, "||A - L L^T|| / ||A|| = {r}");
}

/// Factors an `n x n` matrix whose leading minor of order `bad + 1` is not positive
/// definite, in `block`-tiles placed by `place`; checks that the error names that minor.
fn rejects_a_matrix_not_positive_definite(
    rt: parla::Runtime,
    n: usize,
    bad: usize,
    block: usize,
    place: impl Fn(usize, usize) -> Placements + Clone + Send + Sync + 'static,
) {
    let mut a = Array2::from_shape_fn((n, n), |(i, j)| spd_entry(i, j, n, 1));
    a[(bad, bad)] = -1.0;
    let err = support::within(60, move || {
        rt.block_on(async move {
            let tiles = PArray::from(a).tiles(block, block)?;
            cholesky(&tiles, place, |_, _| {}).await
        })
        .expect_err("not positive definite")
    });
    let msg = err.to_string();
    let order = format!("order {}", bad + 1);
    assert!(
        msg.contains("not positive definite") && msg.contains(&order),
        "{msg}"
    );
}

#[test]
fn a_matrix_that_is_not_positive_definite_is_an_error_naming_the_minor() {
    rejects_a_matrix_not_positive_definite(support::cpu(2), 300, 200, 64, |_, _| Placements::CPU);
}

#[test]
fn tiles_that_are_not_square_are_rejected() {
    let rt = support::cpu(2);
    let err = rt
        .block_on(async {
            let tiles = PArray::from(Array2::<f64>::zeros((8, 8))).tiles(4, 2)?;
            cholesky(&tiles, |_, _| Placements::CPU, |_, _| {}).await
        })
        .expect_err("non-square tiles");
    assert!(err.to_string().contains("square"), "{err}");
    let err = rt
        .block_on(async {
            let tiles = PArray::from(Array2::<f64>::zeros((8, 6))).tiles(2, 2)?;
            cholesky(&tiles, |_, _| Placements::CPU, |_, _| {}).await
        })
        .expect_err("non-square matrix");
    assert!(err.to_string().contains("square"), "{err}");
    assert!(cholesky_residual(Array2::zeros((3, 3)).view(), Array2::zeros((3, 2)).view()).is_err());
}

/// The inverse the GPU panel solves multiply by, computed on the CPU (as it is when the
/// mapping puts `trtri` there): `W L = I` with `W` lower triangular.
#[test]
fn trtri_inverts_the_lower_triangle() {
    use parla::linalg::cholesky::{potrf, trtri};
    let n = 96;
    let a = PArray::from(spd_matrix(n, 2));
    let w = PArray::from(Array2::from_elem((n, n), 7.0));
    let rt = support::cpu(2);
    let (l, w) = rt
        .block_on(async {
            let (a2, w2) = (a.clone(), w.clone());
            parla::task(async move {
                assert_eq!(potrf(&a2)?.into_host()?[0], 0);
                trtri(&a2, &w2)
            })
            .reads_writes(&a)
            .writes(&w)
            .await??;
            Ok::<_, parla::Error>((a.to_host().await?, w.to_host().await?))
        })
        .expect("potrf and trtri");
    for i in 0..n {
        for j in 0..n {
            // (W L)(i, j) over the lower triangles.
            let x: f64 = (0..n)
                .filter(|&k| k <= i && j <= k)
                .map(|k| w[(i, k)] * l[(k, j)])
                .sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((x - want).abs() < 1e-12, "(W L)({i}, {j}) = {x}");
            if j > i {
                assert_eq!(w[(i, j)], 0.0, "W({i}, {j})");
            }
        }
    }
}

#[test]
fn the_test_matrix_is_symmetric_and_diagonally_dominant() {
    let n = 64;
    let a = spd_matrix(n, 9);
    for i in 0..n {
        let off: f64 = (0..n).filter(|&j| j != i).map(|j| a[(i, j)].abs()).sum();
        assert!(a[(i, i)] > off, "row {i}");
        for j in 0..n {
            assert_eq!(a[(i, j)], a[(j, i)]);
        }
    }
    // Another seed, another matrix.
    assert_ne!(spd_matrix(n, 10), a);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_tiles_factor_to_the_residual_bound() {
    let Some(rt) = support::gpu::real() else {
        return;
    };
    let (r, tasks, valid) = factor(rt, 1024, 256, block_cyclic(1));
    assert!(r < 1e-12, "||A - L L^T|| / ||A|| = {r}");
    assert_eq!(tasks, tasks_of(4));
    // L was written on GPU 0, then read back to the host by the gathering task.
    for (idx, v) in valid.iter().enumerate() {
        if idx % 4 <= idx / 4 {
            assert!(v.contains(&Device::gpu(0)), "tile {idx} valid on {v:?}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_tiles_block_cyclic_over_every_gpu() {
    let Some(rt) = support::gpu::real() else {
        return;
    };
    let gpus = rt.gpus();
    let (r, _, valid) = factor(rt, 1536, 256, block_cyclic(gpus));
    assert!(r < 1e-12, "||A - L L^T|| / ||A|| = {r}");
    let owner = block_cyclic(gpus);
    for (idx, v) in valid.iter().enumerate() {
        let (i, j) = (idx / 6, idx % 6);
        if j <= i {
            assert!(
                v.iter()
                    .any(|d| owner(i, j) == Placements::default().with(Placement::from(*d))),
                "tile ({i}, {j}) valid on {v:?}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_reports_a_matrix_that_is_not_positive_definite() {
    let Some(rt) = support::gpu::real() else {
        return;
    };
    rejects_a_matrix_not_positive_definite(rt, 512, 300, 128, block_cyclic(1));
}

/// Two GPUs get tile rows back and forth (0, 1, 1, 0, ...), which evens out the lower
/// triangle's work between them; four form a 2 x 2 grid.
#[test]
fn block_cyclic_deals_rows_back_and_forth() {
    let on = |g: usize| Placements::default().with(Placement::Gpu(g));
    let two = block_cyclic(2);
    let rows: Vec<usize> = (0..8)
        .map(|i| (0..2).find(|&g| two(i, 0) == on(g)).unwrap())
        .collect();
    assert_eq!(rows, [0, 1, 1, 0, 0, 1, 1, 0]);
    // The update work of tile (i, j) of a 16 x 16 lower triangle is about j + 1 GEMMs.
    let mut work = [0usize; 2];
    for i in 0..16 {
        for j in 0..=i {
            let g = (0..2).find(|&g| two(i, j) == on(g)).unwrap();
            work[g] += j + 1;
        }
    }
    let (lo, hi) = (work[0].min(work[1]), work[0].max(work[1]));
    assert!(hi as f64 / lo as f64 <= 1.03, "work per GPU {work:?}");
    let four = block_cyclic(4);
    assert_eq!(four(0, 0), on(0));
    assert_eq!(four(0, 1), on(1));
    assert_eq!(four(1, 0), on(2));
    assert_eq!(
        four(2, 0),
        on(2),
        "the third row goes back to the grid's second row"
    );
    let one = block_cyclic(1);
    assert!((0..5).all(|i| one(i, i) == on(0)));
}
