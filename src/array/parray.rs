//! [`PArray`]: an array whose copies on the host and the GPUs the runtime keeps coherent.

use std::ops::Range;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use ndarray::{
    Array, Array2, ArrayRef, ArrayView, ArrayViewMut, Dimension, IntoDimension, Ix1, Ix2, s,
};
use parking_lot::Mutex;
use parla_core::data::{Access, Acquired, AsData, DataObject, Flow, Ledger, current_task_key};
use parla_core::device::backend::{Fence, FenceStatus};
use parla_core::{Arch, Device, current_device};

use super::Element;
use crate::{Error, Result};

#[cfg(feature = "cuda")]
use parla_gpu::cudarc::driver::CudaSlice;
#[cfg(feature = "cuda")]
use parla_gpu::transfer::{GpuHandle, PinnedVec};

/// The clock of last uses, shared by every array (eviction picks the oldest).
static CLOCK: AtomicU64 = AtomicU64::new(1);

fn tick() -> u64 {
    CLOCK.fetch_add(1, Ordering::Relaxed)
}

/// An n-dimensional array that tasks declare they read or write
/// ([`TaskBuilder::reads`](crate::TaskBuilder::reads), `writes`, `reads_writes`); the
/// runtime keeps its copies on the host and the GPUs coherent and orders the tasks that use
/// it.
///
/// - Before a task's body runs, every array it declared is valid on its device: copied from
///   the host or another GPU on the task's stream (GPU tasks), or from a GPU to the host
///   (CPU tasks; the task waits for the copy without blocking a worker).
/// - Tasks that use one array run in spawn order: a read after the last write, a write after
///   the last write and every read since; reads run together. No `.after` is needed for
///   data.
/// - A write makes the writer's copy the only valid one (the others are freed: MSI). When a
///   GPU is full, copies no task is using are evicted, least recently used first (a copy
///   that is the only valid one is written back to the host first).
/// - Inside a task: [`read`](Self::read) / [`write`](Self::write) give host views (on the CPU
///   and on virtual GPUs), [`device`](Self::device) / [`device_mut`](Self::device_mut) the
///   cudarc buffer (on a GPU). Using an array the task did not declare, or writing one it
///   declared read-only, is an error.
/// - Outside tasks, [`to_host`](Self::to_host) returns the data once the tasks spawned
///   before that write it finished.
///
/// Cloning is cheap: clones are handles of one array. The host copy is page-locked the first
/// time a GPU uses the array, so copies are asynchronous and run at full bandwidth.
///
/// ```
/// use parla::array::PArray;
/// use parla::prelude::*;
///
/// let rt = parla::Runtime::builder().cpu_threads(2).virtual_gpus(1, 1 << 30).build()?;
/// let a = PArray::from(ndarray::array![[1.0, 2.0], [3.0, 4.0]]);
/// let total = rt.block_on(async {
///     let b = a.clone();
///     task(async move { b.write()?.mapv_inplace(|x| 2.0 * x); Ok::<_, parla::Error>(()) })
///         .reads_writes(&a)
///         .placement(Placement::AnyGpu)
///         .spawn();
///     // Ordered after the write by the accesses alone.
///     let b = a.clone();
///     task(async move { Ok::<_, parla::Error>(b.read()?.sum()) }).reads(&a).await
/// })??;
/// assert_eq!(total, 20.0);
/// # Ok::<_, parla::Error>(())
/// ```
pub struct PArray<A, D> {
    inner: Arc<Handles<A, D>>,
}

/// What the handles of one array share. When the last handle is dropped, no task can
/// declare an access to the array any more, so its task order is cleared: the order holds
/// the last tasks that accessed the array, whose declared accesses hold the array, and
/// that cycle would otherwise keep the array and its buffers allocated for good. (Tasks
/// still running keep the array itself, through their accesses.)
struct Handles<A, D>(Arc<Inner<A, D>>);

impl<A, D> std::ops::Deref for Handles<A, D> {
    type Target = Inner<A, D>;

    fn deref(&self) -> &Inner<A, D> {
        &self.0
    }
}

impl<A, D> Drop for Handles<A, D> {
    fn drop(&mut self) {
        // SAFETY: the last handle is going: no task can declare an access to the array
        // any more.
        unsafe { self.0.flow.clear() };
    }
}

impl<A, D> Clone for PArray<A, D> {
    fn clone(&self) -> Self {
        PArray {
            inner: self.inner.clone(),
        }
    }
}

impl<A: Element, D: Dimension + 'static> std::fmt::Debug for PArray<A, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PArray")
            .field("shape", &self.shape())
            .field("valid", &self.valid_devices())
            .finish()
    }
}

struct Inner<A, D> {
    dim: D,
    len: usize,
    bytes: u64,
    flow: Flow,
    state: Mutex<State<A>>,
    me: Weak<Inner<A, D>>,
}

/// A borrow flag: readers count up, a writer holds `-1`.
type Borrow = Arc<AtomicIsize>;

struct State<A> {
    host: Host<A>,
    host_borrow: Borrow,
    host_valid: bool,
    /// A copy into the host still in flight (a read-back or a write-back from a GPU).
    host_ready: Option<Arc<dyn Fence>>,
    copies: Vec<Copy<A>>,
    /// Tasks running with the array: (task key, device, access).
    grants: Vec<(usize, Device, Access)>,
    /// The data is gone: a mutable view outlived its task ([`Inner::detach_escaped`]).
    lost: bool,
}

enum Host<A> {
    Plain(Box<[A]>),
    #[cfg(feature = "cuda")]
    Pinned(PinnedVec<A>),
}

impl<A: Element> Host<A> {
    fn as_ptr(&self) -> *const A {
        match self {
            Host::Plain(b) => b.as_ptr(),
            #[cfg(feature = "cuda")]
            Host::Pinned(p) => p.as_slice().as_ptr(),
        }
    }

    fn as_mut_ptr(&mut self) -> *mut A {
        match self {
            Host::Plain(b) => b.as_mut_ptr(),
            #[cfg(feature = "cuda")]
            Host::Pinned(p) => p.as_mut_slice().as_mut_ptr(),
        }
    }

    fn as_slice(&self) -> &[A] {
        match self {
            Host::Plain(b) => b,
            #[cfg(feature = "cuda")]
            Host::Pinned(p) => p.as_slice(),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [A] {
        match self {
            Host::Plain(b) => b,
            #[cfg(feature = "cuda")]
            Host::Pinned(p) => p.as_mut_slice(),
        }
    }
}

/// A copy on a GPU (a real one: a cudarc buffer; a virtual one: host memory of its own).
struct Copy<A> {
    device: Device,
    buf: Buf<A>,
    valid: bool,
    pins: u32,
    last_use: u64,
    ledger: Ledger,
    borrow: Borrow,
}

enum Buf<A> {
    Virtual(Box<[A]>),
    #[cfg(feature = "cuda")]
    Gpu(Box<CudaSlice<A>>, GpuHandle),
}

impl<A> State<A> {
    fn copy(&self, d: Device) -> Option<&Copy<A>> {
        self.copies.iter().find(|c| c.device == d)
    }

    fn copy_mut(&mut self, d: Device) -> Option<&mut Copy<A>> {
        self.copies.iter_mut().find(|c| c.device == d)
    }

    /// Whether copy `i` is the only valid one (the host's invalid too): freeing it would
    /// lose the data unless it is written back first.
    fn sole_valid(&self, i: usize) -> bool {
        self.copies[i].valid
            && !self.host_valid
            && !self
                .copies
                .iter()
                .enumerate()
                .any(|(j, c)| j != i && c.valid)
    }

    fn grant(&self, task: usize, d: Device) -> Option<Access> {
        self.grants
            .iter()
            .find(|g| g.0 == task && g.1 == d)
            .map(|g| g.2)
    }

    /// Whether the host copy's last incoming copy finished (clears it then); an error of
    /// that copy is returned.
    fn host_settled(&mut self) -> std::result::Result<bool, String> {
        match self.host_ready.as_ref().map(|f| f.status()) {
            None | Some(FenceStatus::Done) => {
                self.host_ready = None;
                Ok(true)
            }
            Some(FenceStatus::Pending) => Ok(false),
            Some(FenceStatus::Failed(m)) => Err(m),
        }
    }
}

impl<A: Element, D: Dimension + 'static> PArray<A, D> {
    /// A new array holding `data` (on the host).
    pub fn new(data: Array<A, D>) -> Self {
        let dim = data.raw_dim();
        let n = data.len();
        let host: Box<[A]> = if data.is_standard_layout() {
            // The elements are contiguous, in order, from the offset on.
            let (mut v, offset) = data.into_raw_vec_and_offset();
            let offset = offset.unwrap_or(0);
            v.drain(..offset.min(v.len()));
            v.truncate(n);
            v.into_boxed_slice()
        } else {
            data.iter().copied().collect()
        };
        Self::from_host(dim, host)
    }

    fn from_host(dim: D, host: Box<[A]>) -> Self {
        let len = host.len();
        // The views that `read` and `write` make of the host copy take their shape from
        // `dim`: it must describe exactly `len` elements.
        assert_eq!(
            dim.size_checked(),
            Some(len),
            "a PArray's shape and data disagree"
        );
        let inner = Arc::new_cyclic(|me| Inner {
            dim,
            len,
            bytes: (len * std::mem::size_of::<A>()) as u64,
            flow: Flow::default(),
            state: Mutex::new(State {
                host: Host::Plain(host),
                host_borrow: Borrow::default(),
                host_valid: true,
                host_ready: None,
                copies: Vec::new(),
                grants: Vec::new(),
                lost: false,
            }),
            me: me.clone(),
        });
        PArray {
            inner: Arc::new(Handles(inner)),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.inner.dim.slice()
    }

    /// The shape as a dimension value.
    pub fn raw_dim(&self) -> D {
        self.inner.dim.clone()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The size of one copy in bytes.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes
    }

    /// Where valid copies are now (`cpu:0` for the host), for diagnostics: the answer can
    /// change as soon as it is returned.
    pub fn valid_devices(&self) -> Vec<Device> {
        let s = self.inner.state.lock();
        let mut v = Vec::new();
        if s.host_valid {
            v.push(Device::CPU);
        }
        v.extend(s.copies.iter().filter(|c| c.valid).map(|c| c.device));
        v
    }

    /// The running task's access and where its copy is, or the error for using the array
    /// undeclared.
    fn granted(&self, write: bool) -> Result<(usize, Device, Access)> {
        let task = current_task_key().ok_or_else(|| {
            Error::InvalidArgument(
                "a PArray is read or written inside a task that declared it, not outside any task (outside tasks: to_host().await; a future given to tokio::spawn or a thread is outside the task that started it)".into(),
            )
        })?;
        let device = current_device();
        let s = self.inner.state.lock();
        let access = s.grant(task, device).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "this task did not declare the PArray of shape {:?}: add .reads(&a), .writes(&a) or .reads_writes(&a) to its builder",
                self.shape()
            ))
        })?;
        if write && !access.writes() {
            return Err(Error::InvalidArgument(format!(
                "this task declared the PArray of shape {:?} read-only (.reads): declare .reads_writes(&a) or .writes(&a) to write it",
                self.shape()
            )));
        }
        Ok((task, device, access))
    }

    /// A host view of the array for the running task: its host copy on the CPU, its copy
    /// on a virtual GPU. On a real GPU use [`device`](Self::device).
    ///
    /// Errors: the task did not declare the array; it holds a [`write`](Self::write) view
    /// of it now; on a real GPU.
    ///
    /// A view is for the task that took it. One that outlives the task (returned by it, or
    /// kept in a static or in a future given to `tokio::spawn`: possible where the array is
    /// `'static`) keeps the memory it points to, unchanged, for the rest of the program,
    /// and the array goes on with a copy; a mutable view ([`write`](Self::write),
    /// `device_mut`) that outlives its task makes the array's data lost:
    /// later uses fail.
    pub fn read(&self) -> Result<Read<'_, A, D>> {
        let (_, device, _) = self.granted(false)?;
        let (ptr, borrow) = self.host_side(device)?;
        take(&borrow, false)?;
        // SAFETY: `ptr` points to `len` initialised elements in standard order (`dim`
        // describes exactly `len`: checked where the array was made, `from_host`): the host
        // copy, or this device's copy, which stays allocated while the task holds its
        // grant (pinned: not evicted; no writer runs alongside a reader). The borrow flag
        // excludes a mutable view meanwhile.
        let view = unsafe { ArrayView::from_shape_ptr(self.inner.dim.clone(), ptr) };
        Ok(Read {
            view,
            _borrow: Held(borrow, false),
        })
    }

    /// A mutable host view of the array for the running task (which declared it written),
    /// as [`read`](Self::read).
    pub fn write(&self) -> Result<Write<'_, A, D>> {
        let (_, device, _) = self.granted(true)?;
        let (ptr, borrow) = self.host_side(device)?;
        take(&borrow, true)?;
        // SAFETY: as in `read`; the borrow flag makes this the only view now, and the
        // pointer came from a mutable reference.
        let view = unsafe { ArrayViewMut::from_shape_ptr(self.inner.dim.clone(), ptr as *mut A) };
        Ok(Write {
            view,
            _borrow: Held(borrow, true),
        })
    }

    fn host_side(&self, device: Device) -> Result<(*const A, Borrow)> {
        let mut s = self.inner.state.lock();
        if device.arch() == Arch::Cpu {
            let ptr = s.host.as_mut_ptr() as *const A;
            return Ok((ptr, s.host_borrow.clone()));
        }
        let c = s
            .copy_mut(device)
            .ok_or_else(|| Error::InvalidArgument(format!("no copy on {device}")))?;
        match &mut c.buf {
            Buf::Virtual(b) => Ok((b.as_mut_ptr() as *const A, c.borrow.clone())),
            #[cfg(feature = "cuda")]
            Buf::Gpu(..) => Err(Error::InvalidArgument(format!(
                "on {device} the PArray is in GPU memory: use .device() / .device_mut()"
            ))),
        }
    }

    /// The array on the host, once the tasks that write it and were spawned before the
    /// returned future is first polled finished: the read task that copies it is spawned
    /// then, ordered by the accesses (a writer spawned between the call and the first
    /// `.await` comes before it). Awaited inside the runtime (`block_on`, a task, a
    /// `Handle`'s context).
    pub async fn to_host(&self) -> Result<Array<A, D>> {
        in_runtime("PArray::to_host")?;
        let a = self.clone();
        crate::task(async move { Ok::<_, Error>(a.read()?.to_owned()) })
            .reads(self)
            .await?
    }
}

/// An error unless this thread is inside a runtime: `what` spawns a task that reads the
/// data (which would fail as spawned outside a runtime, naming a task the caller never
/// made).
fn in_runtime(what: &str) -> Result<()> {
    if parla_core::Handle::current().is_some() {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{what} was called outside a parla runtime: it runs a task that reads the data, so \
         call it inside Runtime::block_on, a task, or a Handle::enter guard"
    )))
}

#[cfg(feature = "cuda")]
impl<A: Element, D: Dimension + 'static> PArray<A, D> {
    /// The running GPU task's copy of the array (a cudarc buffer, elements in row-major
    /// order), valid on the task's stream.
    ///
    /// Errors: the task did not declare the array; it holds a mutable borrow now; not on a
    /// real GPU.
    pub fn device(&self) -> Result<DeviceRead<'_, A>> {
        let (_, device, _) = self.granted(false)?;
        let (ptr, borrow) = self.device_side(device)?;
        take(&borrow, false)?;
        // SAFETY: the buffer is boxed (its address is stable) and stays allocated while the
        // task holds its grant; the borrow flag excludes a mutable borrow meanwhile.
        let slice = unsafe { &*ptr };
        Ok(DeviceRead {
            slice,
            _borrow: Held(borrow, false),
        })
    }

    /// The running GPU task's copy of the array, mutably (the task declared it written).
    pub fn device_mut(&self) -> Result<DeviceWrite<'_, A>> {
        let (_, device, _) = self.granted(true)?;
        let (ptr, borrow) = self.device_side(device)?;
        take(&borrow, true)?;
        // SAFETY: as in `device`; the flag makes this the only borrow now.
        let slice = unsafe { &mut *ptr };
        Ok(DeviceWrite {
            slice,
            _borrow: Held(borrow, true),
        })
    }

    fn device_side(&self, device: Device) -> Result<(*mut CudaSlice<A>, Borrow)> {
        let mut s = self.inner.state.lock();
        let c = s.copy_mut(device).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no GPU copy on {device}: .device() is for tasks on a real GPU (use .read() / .write() elsewhere)"
            ))
        })?;
        match &mut c.buf {
            Buf::Gpu(b, _) => Ok((&mut **b as *mut CudaSlice<A>, c.borrow.clone())),
            Buf::Virtual(_) => Err(Error::InvalidArgument(format!(
                "{device} is a virtual GPU: the copy is in host memory, use .read() / .write()"
            ))),
        }
    }
}

impl<A: Element, D: Dimension + 'static> From<Array<A, D>> for PArray<A, D> {
    fn from(a: Array<A, D>) -> Self {
        PArray::new(a)
    }
}

impl<A: Element, D: Dimension + 'static> PArray<A, D> {
    /// A new array of zeros of shape `shape`.
    ///
    /// # Panics
    ///
    /// If the number of elements (or of bytes) of `shape` overflows `isize`, as ndarray's
    /// `Array::zeros` does.
    ///
    /// ```
    /// use parla::array::PArray;
    ///
    /// let a = PArray::<f64, _>::zeros((3, 4));
    /// assert_eq!(a.shape(), &[3, 4]);
    /// assert_eq!(a.bytes(), 96);
    /// ```
    pub fn zeros<Sh: IntoDimension<Dim = D>>(shape: Sh) -> Self {
        let dim = shape.into_dimension();
        let n = element_count::<A, _>(&dim).unwrap_or_else(|| {
            panic!(
                "PArray::zeros: shape {:?} too large: its size overflows isize",
                dim.slice()
            )
        });
        Self::from_host(dim, vec![A::ZERO; n].into_boxed_slice())
    }
}

/// The number of elements of an array of `A` of shape `dim`, if it and its size in bytes
/// fit in `isize` (what ndarray allows).
fn element_count<A, D: Dimension>(dim: &D) -> Option<usize> {
    if !spans_fit(dim.slice()) {
        return None;
    }
    let n = dim.size_checked()?;
    let bytes = n.checked_mul(std::mem::size_of::<A>().max(1))?;
    (bytes <= isize::MAX as usize).then_some(n)
}

/// Whether the product of the lengths in `shape` that are not zero fits in an `isize`, as
/// ndarray's constructors ask (views compute strides and offsets with it, even of an empty
/// array).
fn spans_fit(shape: &[usize]) -> bool {
    shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_some_and(|p| p <= isize::MAX as usize)
}

impl<A: Element, D: Dimension + 'static> AsData for PArray<A, D> {
    unsafe fn as_data(&self) -> Arc<dyn DataObject> {
        self.inner.0.clone()
    }
}

/// A grid of tiles of a 2-D array, each a [`PArray`] of its own (for tiled algorithms).
pub struct Tiles<A> {
    grid: Vec<PArray<A, Ix2>>,
    rows: usize,
    cols: usize,
    shape: (usize, usize),
    tile: (usize, usize),
}

impl<A> Clone for Tiles<A> {
    fn clone(&self) -> Self {
        Tiles {
            grid: self.grid.clone(),
            rows: self.rows,
            cols: self.cols,
            shape: self.shape,
            tile: self.tile,
        }
    }
}

impl<A: Element> std::fmt::Debug for Tiles<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiles")
            .field("grid", &(self.rows, self.cols))
            .field("shape", &self.shape)
            .field("tile", &self.tile)
            .finish()
    }
}

impl<A: Element> Tiles<A> {
    /// The tile at row `i`, column `j` of the grid.
    ///
    /// # Panics
    /// If `i` or `j` is outside the grid (as indexing does).
    pub fn get(&self, i: usize, j: usize) -> &PArray<A, Ix2> {
        assert!(
            i < self.rows && j < self.cols,
            "tile ({i}, {j}) outside a {} x {} grid",
            self.rows,
            self.cols
        );
        &self.grid[i * self.cols + j]
    }

    /// Rows of tiles.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of tiles.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The whole array's shape.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// The shape of a whole tile (those of the last row and column may be smaller), at most
    /// the array's.
    pub fn tile_shape(&self) -> (usize, usize) {
        self.tile
    }

    /// Every tile, row by row.
    pub fn iter(&self) -> impl Iterator<Item = &PArray<A, Ix2>> {
        self.grid.iter()
    }

    /// The whole array on the host, assembled from the tiles once the tasks that write
    /// them and were spawned before the returned future is first polled finished (one read
    /// task over every tile, spawned then, as [`PArray::to_host`]'s).
    pub async fn to_host(&self) -> Result<Array2<A>> {
        in_runtime("Tiles::to_host")?;
        let me = self.clone();
        let mut t = crate::task(async move {
            let mut whole = Array2::from_elem(me.shape, A::ZERO);
            for i in 0..me.rows {
                for j in 0..me.cols {
                    let tile = me.get(i, j).read()?;
                    let (r0, c0) = (i * me.tile.0, j * me.tile.1);
                    whole
                        .slice_mut(s![r0..r0 + tile.nrows(), c0..c0 + tile.ncols()])
                        .assign(&*tile);
                }
            }
            Ok::<_, Error>(whole)
        });
        for tile in &self.grid {
            t = t.reads(tile);
        }
        t.await?
    }
}

impl<A: Element> Tiles<A> {
    /// A `shape` array of zeros in tiles of `tile` (the last row and column of tiles take
    /// what remains), without a whole array first: for data that tasks then write tile by
    /// tile.
    ///
    /// Errors: a zero tile size; a shape or a tile whose size overflows `isize` (as
    /// ndarray's constructors count it); more tiles than a vector holds.
    pub fn zeros(shape: (usize, usize), tile: (usize, usize)) -> Result<Tiles<A>> {
        if !spans_fit(&[shape.0, shape.1]) {
            return Err(Error::InvalidArgument(format!(
                "a shape of {} x {} is too large: the product of its non-zero lengths overflows isize",
                shape.0, shape.1
            )));
        }
        let whole = (tile.0.min(shape.0), tile.1.min(shape.1));
        if element_count::<A, _>(&Ix2(whole.0, whole.1)).is_none() {
            return Err(Error::InvalidArgument(format!(
                "tiles of {} x {}: a tile's size overflows isize",
                whole.0, whole.1
            )));
        }
        Tiles::build(shape, tile, |r, c| PArray::zeros((r.len(), c.len())))
    }

    /// The grid of `tile` tiles over `shape` (the last row and column of tiles take what
    /// remains), tile `(i, j)` made by `part` from its rows and columns in the whole array.
    fn build(
        shape: (usize, usize),
        tile: (usize, usize),
        mut part: impl FnMut(Range<usize>, Range<usize>) -> PArray<A, Ix2>,
    ) -> Result<Tiles<A>> {
        let ((n, m), (rows, cols)) = (shape, tile);
        if rows == 0 || cols == 0 {
            return Err(Error::InvalidArgument(format!(
                "tiles of {rows} x {cols}: a tile has at least one row and one column"
            )));
        }
        let (tr, tc) = (n.div_ceil(rows), m.div_ceil(cols));
        let Some(count) = tr
            .checked_mul(tc)
            .filter(|&c| element_count::<PArray<A, Ix2>, _>(&Ix1(c)).is_some())
        else {
            return Err(Error::InvalidArgument(format!(
                "{tr} x {tc} tiles of {rows} x {cols}: more tiles than a vector holds"
            )));
        };
        let mut grid = Vec::with_capacity(count);
        // (No tiles: an axis of length 0, however long the other is.)
        for i in (0..tr).take_while(|_| count > 0) {
            for j in 0..tc {
                grid.push(part(
                    i * rows..((i + 1) * rows).min(n),
                    j * cols..((j + 1) * cols).min(m),
                ));
            }
        }
        Ok(Tiles {
            grid,
            rows: tr,
            cols: tc,
            shape,
            // (A tile larger than the array is as large as the array.)
            tile: (rows.min(n), cols.min(m)),
        })
    }
}

impl<A: Element> PArray<A, Ix2> {
    /// Splits the array into tiles of `rows x cols` (the last row and column of tiles take
    /// what remains), each a new [`PArray`] holding a copy of its part of the array's host
    /// data. The tiles are arrays of their own: writing one does not change this array
    /// ([`Tiles::to_host`] assembles them).
    ///
    /// It copies the host data as it is when called, outside the order of the tasks: call
    /// it once the tasks that write the array finished (await them, or
    /// [`to_host`](Self::to_host), which waits for them).
    ///
    /// Errors: a zero tile size; a task that writes the array has not finished (it waits or
    /// runs); the last task that wrote it failed (`DependencyFailed`, as for a task reading
    /// it); the host copy is not valid now (a GPU task wrote the array: take the data with
    /// [`to_host`](Self::to_host) first).
    pub fn tiles(&self, rows: usize, cols: usize) -> Result<Tiles<A>> {
        let (n, m) = (self.inner.dim[0], self.inner.dim[1]);
        // The writer checked under the state lock, which a writer's grant takes too
        // (`acquire`): a writer granted before this lock was spawned before it, so the order
        // holds it (unfinished); one granted after writes once the copy below is made.
        let s = self.inner.state.lock();
        match self.inner.flow.writer_in_the_way("tiles()") {
            None => {}
            Some(Ok(writer)) => {
                return Err(Error::InvalidArgument(format!(
                    "tiles() copies the host data as it is now, and task {writer}, which writes the array, has not finished: await it (and, if it ran on a GPU, `to_host()`) first"
                )));
            }
            Some(Err(e)) => return Err(Error::Task(e)),
        }
        if s.lost {
            return Err(Error::InvalidArgument(format!("tiles(): {LOST}")));
        }
        if !s.host_valid || s.host_ready.is_some() {
            return Err(Error::InvalidArgument(
                "tiles() splits the host copy, which is stale: a GPU task wrote the array last; `to_host().await` brings it back first"
                    .into(),
            ));
        }
        // SAFETY: the host copy holds `n * m` initialised elements in standard order; the
        // state lock keeps it from changing while it is read.
        let whole = unsafe { ArrayView::from_shape_ptr((n, m), s.host.as_ptr()) };
        Tiles::build((n, m), (rows, cols), |r, c| {
            PArray::new(whole.slice(s![r, c]).to_owned())
        })
    }
}

/// Why an array whose data was lost cannot be used ([`Inner::detach_escaped`]).
const LOST: &str = "the PArray's data is lost: a mutable view of it (write() or device_mut()) outlived the task that took it, and may still write its memory";

/// Whether no view borrows through `b` now.
fn borrow_free(b: &Borrow) -> bool {
    b.load(Ordering::Acquire) == 0
}

/// A borrow flag taken by a view (exclusively for a mutable one), given back when the view
/// drops.
struct Held(Borrow, bool);

impl Drop for Held {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(0, Ordering::Release);
        } else {
            self.0.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Takes a borrow flag: shared (`write = false`) or exclusive.
fn take(b: &AtomicIsize, write: bool) -> Result<()> {
    if write {
        b.compare_exchange(0, -1, Ordering::Acquire, Ordering::Relaxed)
            .map(|_| ())
            .map_err(|_| {
                Error::InvalidArgument("the PArray is borrowed already in this task".into())
            })
    } else {
        let mut cur = b.load(Ordering::Relaxed);
        loop {
            if cur < 0 {
                return Err(Error::InvalidArgument(
                    "the PArray is borrowed mutably in this task".into(),
                ));
            }
            match b.compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(a) => cur = a,
            }
        }
    }
}

/// A host view of a [`PArray`] (see [`PArray::read`]): derefs to ndarray's [`ArrayRef`],
/// so every method of an array works on it, through the guard (`r.sum()`, `r.view()`,
/// `&*r` where an `&ArrayRef` is asked for). Views and slices made from it borrow the guard:
/// none outlives it, or the borrow flag it holds.
pub struct Read<'a, A, D> {
    view: ArrayView<'a, A, D>,
    _borrow: Held,
}

impl<A, D> Deref for Read<'_, A, D> {
    type Target = ArrayRef<A, D>;
    fn deref(&self) -> &ArrayRef<A, D> {
        &self.view
    }
}

/// Shows the view, as ndarray shows an array (elements, shape, strides).
impl<A: std::fmt::Debug, D: Dimension> std::fmt::Debug for Read<'_, A, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.view, f)
    }
}

/// A mutable host view of a [`PArray`] (see [`PArray::write`]): derefs to ndarray's
/// [`ArrayRef`], mutably, as [`Read`] does.
pub struct Write<'a, A, D> {
    view: ArrayViewMut<'a, A, D>,
    _borrow: Held,
}

impl<A, D> Deref for Write<'_, A, D> {
    type Target = ArrayRef<A, D>;
    fn deref(&self) -> &ArrayRef<A, D> {
        &self.view
    }
}

/// Shows the view, as ndarray shows an array (elements, shape, strides).
impl<A: std::fmt::Debug, D: Dimension> std::fmt::Debug for Write<'_, A, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.view, f)
    }
}

impl<A, D: Dimension> DerefMut for Write<'_, A, D> {
    fn deref_mut(&mut self) -> &mut ArrayRef<A, D> {
        &mut self.view
    }
}

/// A GPU task's copy of a [`PArray`] (see [`PArray::device`]).
#[cfg(feature = "cuda")]
pub struct DeviceRead<'a, A> {
    slice: &'a CudaSlice<A>,
    _borrow: Held,
}

#[cfg(feature = "cuda")]
impl<A> Deref for DeviceRead<'_, A> {
    type Target = CudaSlice<A>;
    fn deref(&self) -> &CudaSlice<A> {
        self.slice
    }
}

#[cfg(feature = "cuda")]
impl<A: std::fmt::Debug> std::fmt::Debug for DeviceRead<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.slice, f)
    }
}

/// A GPU task's copy of a [`PArray`], mutably (see [`PArray::device_mut`]).
#[cfg(feature = "cuda")]
pub struct DeviceWrite<'a, A> {
    slice: &'a mut CudaSlice<A>,
    _borrow: Held,
}

#[cfg(feature = "cuda")]
impl<A> Deref for DeviceWrite<'_, A> {
    type Target = CudaSlice<A>;
    fn deref(&self) -> &CudaSlice<A> {
        self.slice
    }
}

#[cfg(feature = "cuda")]
impl<A: std::fmt::Debug> std::fmt::Debug for DeviceWrite<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.slice, f)
    }
}

#[cfg(feature = "cuda")]
impl<A> DerefMut for DeviceWrite<'_, A> {
    fn deref_mut(&mut self) -> &mut CudaSlice<A> {
        self.slice
    }
}

impl<A: Element, D: Dimension + 'static> Inner<A, D> {
    fn weak(&self) -> Weak<dyn DataObject> {
        self.me.clone()
    }

    /// Makes the host copy valid from a valid device copy (the data is on its way when a
    /// fence is left in `host_ready`).
    fn fetch_to_host(&self, s: &mut State<A>) -> std::result::Result<(), String> {
        let State {
            host,
            copies,
            host_ready,
            host_valid,
            host_borrow,
            ..
        } = s;
        // (Only a real GPU's copy comes back through a fence or a page-locked buffer.)
        #[cfg(not(feature = "cuda"))]
        let _ = (host_ready, host_borrow);
        let Some(src) = copies.iter().find(|c| c.valid) else {
            return Err("no valid copy of the array anywhere".into());
        };
        match &src.buf {
            Buf::Virtual(b) => host.as_mut_slice().copy_from_slice(b),
            #[cfg(feature = "cuda")]
            Buf::Gpu(slice, gpu) => match host {
                Host::Pinned(p) => {
                    // SAFETY: nothing reads, writes or frees the host copy before the fence
                    // left in `host_ready` fired: an access to the host waits for it
                    // (`acquire`, `tiles`), no view of the host is out (the host copy was
                    // not valid), and the array's drop waits for the fence before it frees
                    // the buffer.
                    *host_ready =
                        Some(unsafe { gpu.download_async(slice, p) }.map_err(|e| e.to_string())?);
                }
                Host::Plain(b) => {
                    if borrow_free(host_borrow) {
                        // Page-locked now, at the first copy into the host: no stale
                        // contents to keep (the copy overwrites them all).
                        let len = b.len();
                        // SAFETY: the download below writes all `len` values; until its
                        // fence fires (`host_ready`), nothing reads the host copy.
                        let mut p =
                            unsafe { gpu.pinned_uninit::<A>(len) }.map_err(|e| e.to_string())?;
                        // SAFETY: as above; `p` becomes the host copy.
                        *host_ready = Some(
                            unsafe { gpu.download_async(slice, &mut p) }
                                .map_err(|e| e.to_string())?,
                        );
                        *host = Host::Pinned(p);
                    } else {
                        let v = parla_gpu::transfer::to_host(slice).map_err(|e| e.to_string())?;
                        b.copy_from_slice(&v);
                    }
                }
            },
        }
        *host_valid = true;
        Ok(())
    }

    /// Called once no task uses `device`'s side of the array (the host's for the CPU) any
    /// more: a view of that side still borrowed now outlived the task that took it (the
    /// task returned it, or kept it in a static or a future it gave to `tokio::spawn`). The
    /// view points into that side's buffer, so the buffer is left to it for good (leaked:
    /// the view may be used for as long as the program runs), and the array goes on without
    /// it: with a copy of its data for read views; for a mutable view, whose writes may go
    /// on, with none (the array's data is lost, and later accesses fail saying so).
    fn detach_escaped(
        &self,
        s: &mut State<A>,
        device: Device,
        freed: &mut Vec<(Ledger, Device, u64)>,
    ) {
        if device.arch() == Arch::Cpu {
            let b = s.host_borrow.load(Ordering::Acquire);
            if b == 0 {
                return;
            }
            // (Read views only read: the copy races with nothing.)
            let fresh: Box<[A]> = if b > 0 {
                s.host.as_slice().into()
            } else {
                vec![A::ZERO; self.len].into_boxed_slice()
            };
            std::mem::forget(std::mem::replace(&mut s.host, Host::Plain(fresh)));
            s.host_borrow = Borrow::default();
            if b < 0 {
                Self::lose(s, freed, self.bytes);
            }
            return;
        }
        let Some(i) = s.copies.iter().position(|c| c.device == device) else {
            return;
        };
        let b = s.copies[i].borrow.load(Ordering::Acquire);
        if b == 0 {
            return;
        }
        // (A write-back reads the buffer, as the read views do; the buffer it reads from is
        // never freed.)
        let kept = b > 0 && (!s.sole_valid(i) || self.fetch_to_host(s).is_ok());
        let Copy {
            buf,
            ledger,
            device,
            ..
        } = s.copies.swap_remove(i);
        std::mem::forget(buf);
        freed.push((ledger, device, self.bytes));
        if !kept {
            Self::lose(s, freed, self.bytes);
        }
    }

    /// The array's data is lost ([`detach_escaped`](Self::detach_escaped)): no copy is
    /// valid, and every access fails from now on.
    fn lose(s: &mut State<A>, freed: &mut Vec<(Ledger, Device, u64)>, bytes: u64) {
        s.lost = true;
        s.host_valid = false;
        Self::drop_copies(s, None, freed, bytes);
    }

    /// Frees every copy but the one on `keep` (`None`: every device copy); the bytes go back
    /// to their ledgers (reported by the caller, outside the lock).
    fn drop_copies(
        s: &mut State<A>,
        keep: Option<Device>,
        freed: &mut Vec<(Ledger, Device, u64)>,
        bytes: u64,
    ) {
        s.copies.retain(|c| {
            if Some(c.device) == keep {
                return true;
            }
            freed.push((c.ledger.clone(), c.device, bytes));
            false
        });
    }
}

impl<A: Element, D: Dimension + 'static> DataObject for Inner<A, D> {
    fn key(&self) -> usize {
        self as *const Self as *const () as usize
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn flow(&self) -> &Flow {
        &self.flow
    }

    fn other_runtime(&self, rt_id: u32) -> Option<u32> {
        // (Copies belong to one runtime: `acquire` makes none for another.)
        let s = self.state.lock();
        let id = s.copies.first()?.ledger.runtime_id();
        (id != rt_id).then_some(id)
    }

    fn valid_on(&self, device: Device) -> bool {
        let s = self.state.lock();
        if device.arch() == Arch::Cpu {
            s.host_valid
        } else {
            s.copy(device).is_some_and(|c| c.valid)
        }
    }

    fn pin_valid(&self, device: Device) -> bool {
        let mut s = self.state.lock();
        match s.copy_mut(device) {
            Some(c) if c.valid => {
                c.pins += 1;
                true
            }
            _ => false,
        }
    }

    unsafe fn unpin(&self, device: Device) {
        if let Some(c) = self.state.lock().copy_mut(device) {
            c.pins = c.pins.saturating_sub(1);
        }
    }

    fn last_use(&self, device: Device) -> Option<u64> {
        let s = self.state.lock();
        s.copy(device).filter(|c| c.pins == 0).map(|c| c.last_use)
    }

    unsafe fn evict(&self, device: Device) -> u64 {
        let mut s = self.state.lock();
        let Some(i) = s.copies.iter().position(|c| c.device == device) else {
            return 0;
        };
        if s.copies[i].pins > 0 || !borrow_free(&s.copies[i].borrow) {
            return 0;
        }
        if s.sole_valid(i) && self.fetch_to_host(&mut s).is_err() {
            // Cannot write it back: keep it.
            return 0;
        }
        s.copies.swap_remove(i);
        self.bytes
    }

    unsafe fn acquire(
        &self,
        ledger: &Ledger,
        task: usize,
        device: Device,
        access: Access,
        pinned: bool,
    ) -> std::result::Result<Acquired, String> {
        let mut freed = Vec::new();
        let res = self.acquire_locked(ledger, task, device, access, pinned, &mut freed);
        // Reported outside the lock: the runtime may serve its queues, which lock objects.
        for (ledger, d, bytes) in freed {
            ledger.freed(d, bytes);
        }
        res
    }

    unsafe fn release(&self, task: usize, device: Device, access: Access) {
        let mut freed = Vec::new();
        {
            let mut s = self.state.lock();
            if let Some(i) = s.grants.iter().position(|g| g.0 == task && g.1 == device) {
                s.grants.swap_remove(i);
            }
            if access.writes() {
                if device.arch() == Arch::Cpu {
                    // (`acquire` waited for any copy into the host.)
                    s.host_valid = true;
                    s.host_ready = None;
                    Self::drop_copies(&mut s, None, &mut freed, self.bytes);
                } else {
                    // (A write-back still landing in the host copy keeps its fence: the
                    // next writer of the host waits for it.)
                    s.host_valid = false;
                    Self::drop_copies(&mut s, Some(device), &mut freed, self.bytes);
                }
            }
            if let Some(c) = s.copy_mut(device) {
                c.pins = c.pins.saturating_sub(1);
                c.last_use = tick();
            }
            // (After the write made this side the valid one: a read view of a writer
            // that escaped leaves the array its data.)
            if !s.grants.iter().any(|g| g.1 == device) {
                self.detach_escaped(&mut s, device, &mut freed);
            }
        }
        for (ledger, d, bytes) in freed {
            ledger.freed(d, bytes);
        }
    }
}

impl<A: Element, D: Dimension + 'static> Inner<A, D> {
    /// [`DataObject::acquire`]; the copies it frees go to `freed` (reported by the caller,
    /// outside the lock).
    fn acquire_locked(
        &self,
        ledger: &Ledger,
        task: usize,
        device: Device,
        access: Access,
        pinned: bool,
        freed: &mut Vec<(Ledger, Device, u64)>,
    ) -> std::result::Result<Acquired, String> {
        let mut s = self.state.lock();
        if s.lost {
            return Err(LOST.into());
        }
        if let Some(c) = s.copies.first()
            && !c.ledger.same_runtime(ledger)
        {
            return Err("a PArray is used by tasks of one runtime only".into());
        }
        let mut out = Acquired::default();
        if device.arch() == Arch::Cpu {
            if access.reads() && !s.host_valid {
                self.fetch_to_host(&mut s)?;
            }
            if !s.host_settled()? {
                out.ready = s.host_ready.clone();
            }
            if access.writes() {
                // Exclusive from now on (MSI): no other copy may be read, or written back
                // over this one, while the task writes.
                s.host_valid = true;
                Self::drop_copies(&mut s, None, freed, self.bytes);
            }
            s.grants.push((task, device, access));
            return Ok(out);
        }
        if s.copy(device).is_none() {
            let buf = self.new_buf(&mut s, access.reads())?;
            s.copies.push(Copy {
                device,
                buf,
                valid: false,
                pins: 0,
                last_use: 0,
                ledger: ledger.clone(),
                borrow: Borrow::default(),
            });
            out.allocated = self.bytes;
            ledger.resident(device, self.weak());
        }
        let needs_fill = !s.copy(device).is_some_and(|c| c.valid);
        if needs_fill && access.reads() {
            self.fill(&mut s, device)?;
        }
        let c = s.copy_mut(device).ok_or("the copy went away")?;
        c.valid = true;
        if !pinned {
            c.pins += 1;
        }
        c.last_use = tick();
        if access.writes() {
            // Exclusive from now on, as on the CPU.
            s.host_valid = false;
            Self::drop_copies(&mut s, Some(device), freed, self.bytes);
        }
        s.grants.push((task, device, access));
        Ok(out)
    }

    /// A new (unfilled) buffer on the running task's device, which `reads` the array or not.
    fn new_buf(&self, s: &mut State<A>, reads: bool) -> std::result::Result<Buf<A>, String> {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = parla_gpu::current() {
            // The host copy is page-locked once, the first time it is copied to a GPU (when
            // no host view is borrowed), so copies are asynchronous from then on. (A copy
            // that is written first, or filled from another GPU, leaves it as it is; the
            // first copy back into the host pins it then: `fetch_to_host`.)
            if let Host::Plain(b) = &s.host
                && reads
                && s.host_valid
                && borrow_free(&s.host_borrow)
                && s.host_ready.is_none()
            {
                let pinned = PinnedVec::from_slice(b).map_err(|e| e.to_string())?;
                s.host = Host::Pinned(pinned);
            }
            // SAFETY: the copy is filled (copied into) before a read access uses it, and a
            // write access declared that the task writes it; until then nothing reads it.
            let slice =
                unsafe { gpu.alloc_uninit::<A>(self.len.max(1)) }.map_err(|e| e.to_string())?;
            return Ok(Buf::Gpu(Box::new(slice), gpu.handle()));
        }
        let _ = (s, reads);
        Ok(Buf::Virtual(vec![A::ZERO; self.len].into_boxed_slice()))
    }

    /// Fills the copy on `device` from the host copy or another valid copy.
    fn fill(&self, s: &mut State<A>, device: Device) -> std::result::Result<(), String> {
        let host_valid = s.host_valid;
        let i = s
            .copies
            .iter()
            .position(|c| c.device == device)
            .ok_or("the copy went away")?;
        // Split the borrow: the destination out, a source among the rest.
        let mut dst = s.copies.swap_remove(i);
        let res = (|| {
            match &mut dst.buf {
                Buf::Virtual(b) => {
                    if host_valid {
                        b.copy_from_slice(s.host.as_slice());
                    } else if let Some(src) = s.copies.iter().find(|c| c.valid) {
                        match &src.buf {
                            Buf::Virtual(from) => b.copy_from_slice(from),
                            #[cfg(feature = "cuda")]
                            Buf::Gpu(..) => {
                                return Err(
                                    "a virtual GPU cannot read a real GPU's copy".to_string()
                                );
                            }
                        }
                    } else {
                        return Err("no valid copy of the array anywhere".into());
                    }
                }
                #[cfg(feature = "cuda")]
                Buf::Gpu(slice, _) => {
                    let gpu = parla_gpu::current().ok_or("a GPU copy is filled in a GPU task")?;
                    if host_valid {
                        if let Some(f) = &s.host_ready {
                            gpu.wait_on(&**f).map_err(|e| e.to_string())?;
                        }
                        match &s.host {
                            Host::Pinned(p) => {
                                // SAFETY: the host copy is not written before this task
                                // finished (a writer of the host is ordered after it) nor
                                // freed (the array's state keeps it, the task the array).
                                let up = unsafe { gpu.upload_pinned(p, slice) };
                                up.map_err(|e| e.to_string())?
                            }
                            Host::Plain(b) => {
                                **slice = gpu.upload(b).map_err(|e| e.to_string())?;
                            }
                        }
                    } else if let Some(src) = s.copies.iter().find(|c| c.valid) {
                        match &src.buf {
                            Buf::Gpu(from, _) => {
                                gpu.copy_into(from, slice).map_err(|e| e.to_string())?
                            }
                            Buf::Virtual(_) => {
                                return Err("a real GPU cannot read a virtual GPU's copy".into());
                            }
                        }
                    } else {
                        return Err("no valid copy of the array anywhere".into());
                    }
                }
            }
            Ok(())
        })();
        s.copies.push(dst);
        res
    }
}

impl<A, D> Drop for Inner<A, D> {
    fn drop(&mut self) {
        let s = self.state.get_mut();
        // A copy into the host may still be writing it: wait before freeing.
        if let Some(f) = s.host_ready.take() {
            while f.status() == FenceStatus::Pending {
                std::thread::yield_now();
            }
        }
        let bytes = self.bytes;
        for c in s.copies.drain(..) {
            let (ledger, d) = (c.ledger.clone(), c.device);
            drop(c);
            ledger.freed(d, bytes);
        }
    }
}
