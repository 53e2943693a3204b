//! Data where the task runs: [`clone_here`] brings an array to the running task's device.
//!
//! | the data | in a CPU task, outside tasks, on a virtual GPU | in a task on a GPU |
//! | --- | --- | --- |
//! | host (`ndarray` arrays, `Vec`, slices) | [`Here::Host`], borrowing it: no copy | [`Here::Device`], a copy on the task's stream |
//! | [`DeviceArray`] on this task's GPU | [`Here::Host`], a copy | [`Here::Device`], the same buffer: no copy |
//! | [`DeviceArray`] on another GPU | [`Here::Host`], a copy | [`Here::Device`], a peer copy on the task's stream |
//!
//! Copies to a GPU are asynchronous: the host data is staged in page-locked memory and
//! copied from there on the task's stream, so `clone_here` returns without waiting for the
//! device, and the kernels and library calls the task enqueues next see the data. Copies
//! from a GPU to the host wait for the data (the caller reads it next); they copy straight
//! into the new host array, which page-locked staging would not make faster.
//!
//! ```
//! use parla::array::{Here, clone_here};
//! use parla::prelude::*;
//!
//! let rt = parla::Runtime::builder().cpu_threads(2).build()?;
//! let a = ndarray::Array2::<f64>::eye(3);
//! let trace = rt.block_on(task(async move {
//!     let here = clone_here(&a)?;
//!     // On the CPU the task reads `a` itself.
//!     assert!(matches!(here, Here::Host(_)));
//!     Ok::<_, parla::Error>(here.to_host()?.diag().sum())
//! }))??;
//! assert_eq!(trace, 3.0);
//! # Ok::<_, parla::Error>(())
//! ```

use std::fmt;

use ndarray::{Array, ArrayBase, ArrayView, ArrayView1, CowArray, Data, Dimension};
#[cfg(feature = "cuda")]
use ndarray::{IntoDimension, Order, ShapeBuilder};

use crate::{Device, Error, Result};

mod parray;

#[cfg(feature = "cuda")]
pub use parray::{DeviceRead, DeviceWrite};
pub use parray::{PArray, Read, Tiles, Write};

#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;
#[cfg(feature = "cuda")]
use parla_gpu::cudarc;
#[cfg(feature = "cuda")]
use std::sync::Arc;

/// An element type [`clone_here`] can move between host and device: plain numbers.
pub trait Element: Copy + Send + Sync + fmt::Debug + 'static + sealed::Repr {}

mod sealed {
    /// What a device copy needs of an element.
    #[cfg(feature = "cuda")]
    pub trait Repr:
        parla_gpu::cudarc::driver::DeviceRepr + parla_gpu::cudarc::driver::ValidAsZeroBits
    {
        /// Zero.
        const ZERO: Self;
    }
    /// What a device copy needs of an element.
    #[cfg(not(feature = "cuda"))]
    pub trait Repr {
        /// Zero.
        const ZERO: Self;
    }
}

macro_rules! elements {
    ($($t:ty),*) => {$(
        impl sealed::Repr for $t {
            const ZERO: Self = 0 as $t;
        }
        impl Element for $t {}
    )*};
}
elements!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);

/// The device-side storage of a [`DeviceArray`]: a cudarc buffer, shared by clones.
#[cfg(feature = "cuda")]
type Buffer<A> = Arc<CudaSlice<A>>;
/// Without the `cuda` feature there are no device arrays: nothing makes one.
#[cfg(not(feature = "cuda"))]
type Buffer<A> = NoBuffer<A>;

#[cfg(not(feature = "cuda"))]
struct NoBuffer<A>(std::marker::PhantomData<fn() -> A>);

#[cfg(not(feature = "cuda"))]
impl<A> Clone for NoBuffer<A> {
    fn clone(&self) -> Self {
        NoBuffer(std::marker::PhantomData)
    }
}

/// An n-dimensional array in a GPU's memory: a cudarc buffer, a shape, and an element
/// order (row-major, as `ndarray`'s default, or column-major, as cuBLAS / cuSOLVER results).
///
/// Clones share the buffer (no copy); [`buffer_mut`](Self::buffer_mut) gives it mutably
/// while it is not shared. Work on the buffer on any stream is ordered after its last
/// write (cudarc tracks that with events).
pub struct DeviceArray<A, D> {
    buf: Buffer<A>,
    dim: D,
    column_major: bool,
    device: Device,
}

impl<A, D: Clone> Clone for DeviceArray<A, D> {
    fn clone(&self) -> Self {
        DeviceArray {
            buf: self.buf.clone(),
            dim: self.dim.clone(),
            column_major: self.column_major,
            device: self.device,
        }
    }
}

impl<A, D: Dimension> fmt::Debug for DeviceArray<A, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceArray")
            .field("device", &self.device)
            .field("shape", &self.dim.slice())
            .field("column_major", &self.column_major)
            .finish()
    }
}

impl<A: Element, D: Dimension> DeviceArray<A, D> {
    /// The GPU holding the array.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.dim.slice()
    }

    /// The shape as a dimension value.
    pub fn raw_dim(&self) -> D {
        self.dim.clone()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.dim.size()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the elements are in column-major (Fortran) order; otherwise row-major.
    pub fn is_column_major(&self) -> bool {
        self.column_major
    }

    /// The array on the host, in the same element order. Waits for the copy.
    pub fn to_host(&self) -> Result<Array<A, D>> {
        #[cfg(feature = "cuda")]
        {
            let data = parla_gpu::transfer::to_host(&self.buf)?;
            let shaped = if self.column_major {
                Array::from_shape_vec(self.dim.clone().f(), data)
            } else {
                Array::from_shape_vec(self.dim.clone(), data)
            };
            shaped.map_err(|e| Error::InvalidArgument(e.to_string()))
        }
        #[cfg(not(feature = "cuda"))]
        Err(Error::Device("parla was built without CUDA".into()))
    }
}

#[cfg(feature = "cuda")]
impl<A: Element, D: Dimension> DeviceArray<A, D> {
    /// An array over `buf`, with shape `shape`, its elements in `order`
    /// ([`Order::RowMajor`], `ndarray`'s default, or [`Order::ColumnMajor`], as cuBLAS and
    /// cuSOLVER write). Call it inside a task on the buffer's GPU: the array records that
    /// device.
    ///
    /// ```no_run
    /// # fn f() -> parla::Result<()> {
    /// use ndarray::Order;
    /// let gpu = parla::gpu::current().expect("inside a GPU task");
    /// let buf = gpu.upload(&[1.0f64, 2.0, 3.0, 4.0])?;
    /// let m = parla::array::DeviceArray::from_buffer(buf, (2, 2), Order::ColumnMajor)?;
    /// # drop(m); Ok(()) }
    /// ```
    ///
    /// Errors: a buffer whose length is not the shape's size, a call outside a task on the
    /// buffer's GPU ([`Error::InvalidArgument`]).
    pub fn from_buffer<Sh: IntoDimension<Dim = D>>(
        buf: CudaSlice<A>,
        shape: Sh,
        order: Order,
    ) -> Result<Self> {
        let dim = shape.into_dimension();
        if dim.size_checked() != Some(buf.len()) {
            return Err(Error::InvalidArgument(format!(
                "a buffer of {} elements does not have shape {:?}",
                buf.len(),
                dim.slice()
            )));
        }
        let device = match parla_gpu::current() {
            Some(g) if g.context().cu_ctx() == buf.context().cu_ctx() => g.device(),
            _ => {
                return Err(Error::InvalidArgument(
                    "DeviceArray::from_buffer is called inside a task on the buffer's GPU".into(),
                ));
            }
        };
        Ok(DeviceArray {
            buf: Arc::new(buf),
            dim,
            column_major: order == Order::ColumnMajor,
            device,
        })
    }

    /// The cudarc buffer.
    pub fn buffer(&self) -> &CudaSlice<A> {
        &self.buf
    }

    /// The cudarc buffer, mutably; `None` while clones share it.
    pub fn buffer_mut(&mut self) -> Option<&mut CudaSlice<A>> {
        Arc::get_mut(&mut self.buf)
    }

    /// The cudarc buffer, if no clone shares it; the array back otherwise.
    pub fn into_buffer(self) -> std::result::Result<CudaSlice<A>, Self> {
        match Arc::try_unwrap(self.buf) {
            Ok(buf) => Ok(buf),
            Err(buf) => Err(DeviceArray { buf, ..self }),
        }
    }
}

/// Data as the running task holds it: on the host or on the task's GPU. What
/// [`clone_here`] returns; [`to_host`](Self::to_host) / [`into_host`](Self::into_host)
/// turn either side back into an `ndarray` array.
pub enum Here<'a, A, D> {
    /// On the host: the caller's data itself (borrowed, no copy), or a copy from a GPU.
    Host(CowArray<'a, A, D>),
    /// On the task's GPU.
    Device(DeviceArray<A, D>),
}

impl<A: Element, D: Dimension> Clone for Here<'_, A, D> {
    fn clone(&self) -> Self {
        match self {
            Here::Host(a) => Here::Host(a.clone()),
            Here::Device(d) => Here::Device(d.clone()),
        }
    }
}

impl<A: Element, D: Dimension> fmt::Debug for Here<'_, A, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Here::Host(a) => f.debug_tuple("Host").field(a).finish(),
            Here::Device(d) => f.debug_tuple("Device").field(d).finish(),
        }
    }
}

impl<'a, A: Element, D: Dimension> Here<'a, A, D> {
    /// Where the data is: [`Device::CPU`] for the host, the GPU otherwise.
    pub fn device(&self) -> Device {
        match self {
            Here::Host(_) => Device::CPU,
            Here::Device(d) => d.device(),
        }
    }

    /// Whether the data is on the host.
    pub fn is_host(&self) -> bool {
        matches!(self, Here::Host(_))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Here::Host(a) => a.shape(),
            Here::Device(d) => d.shape(),
        }
    }

    /// The data on the host: a view of host data, a copy of device data (waiting for it).
    pub fn to_host(&self) -> Result<CowArray<'_, A, D>> {
        match self {
            Here::Host(a) => Ok(CowArray::from(a.view())),
            Here::Device(d) => Ok(CowArray::from(d.to_host()?)),
        }
    }

    /// The same data, owning it: borrowed host data is copied; device data (already owned)
    /// is moved. For returning a [`clone_here`] result from a task, for example.
    pub fn into_owned(self) -> Here<'static, A, D> {
        match self {
            Here::Host(a) => Here::Host(CowArray::from(a.into_owned())),
            Here::Device(d) => Here::Device(d),
        }
    }

    /// The data on the host as an owned array (host data borrowed from the caller is
    /// copied; owned host data is moved).
    pub fn into_host(self) -> Result<Array<A, D>> {
        match self {
            Here::Host(a) => Ok(a.into_owned()),
            Here::Device(d) => d.to_host(),
        }
    }
}

/// Data [`clone_here`] can bring to the running task: `ndarray` arrays and views of any
/// dimension, `Vec`s and slices (as one-dimensional arrays), [`DeviceArray`]s and [`Here`].
pub trait CloneHere {
    /// The element type.
    type Elem: Element;
    /// The dimension.
    type Dim: Dimension;
    /// See [`clone_here`].
    fn clone_here(&self) -> Result<Here<'_, Self::Elem, Self::Dim>>;
}

/// Brings `x` to the running task's device: host data stays where it is (borrowed) in a
/// CPU task, outside tasks and on virtual GPUs; it is copied to the GPU, asynchronously on
/// the task's stream, in a task on a GPU. Device data comes back to the host in a CPU
/// task, is shared (no copy) on its own GPU and copied to another GPU. See the [module
/// docs](self) for the whole table.
///
/// Errors: a failed device allocation or copy ([`Error::Device`]).
pub fn clone_here<T: CloneHere + ?Sized>(x: &T) -> Result<Here<'_, T::Elem, T::Dim>> {
    x.clone_here()
}

impl<S: Data<Elem = A>, A: Element, D: Dimension> CloneHere for ArrayBase<S, D> {
    type Elem = A;
    type Dim = D;
    fn clone_here(&self) -> Result<Here<'_, A, D>> {
        host_here(self.view())
    }
}

impl<A: Element> CloneHere for [A] {
    type Elem = A;
    type Dim = ndarray::Ix1;
    fn clone_here(&self) -> Result<Here<'_, A, ndarray::Ix1>> {
        host_here(ArrayView1::from(self))
    }
}

impl<A: Element> CloneHere for Vec<A> {
    type Elem = A;
    type Dim = ndarray::Ix1;
    fn clone_here(&self) -> Result<Here<'_, A, ndarray::Ix1>> {
        host_here(ArrayView1::from(self.as_slice()))
    }
}

impl<A: Element, D: Dimension> CloneHere for DeviceArray<A, D> {
    type Elem = A;
    type Dim = D;
    fn clone_here(&self) -> Result<Here<'_, A, D>> {
        device_here(self)
    }
}

impl<A: Element, D: Dimension> CloneHere for Here<'_, A, D> {
    type Elem = A;
    type Dim = D;
    fn clone_here(&self) -> Result<Here<'_, A, D>> {
        match self {
            Here::Host(a) => host_here(a.view()),
            Here::Device(d) => device_here(d),
        }
    }
}

/// Host data, here.
fn host_here<A: Element, D: Dimension>(v: ArrayView<'_, A, D>) -> Result<Here<'_, A, D>> {
    #[cfg(feature = "cuda")]
    if let Some(gpu) = parla_gpu::current() {
        return upload(&gpu, v).map(Here::Device);
    }
    Ok(Here::Host(CowArray::from(v)))
}

/// Device data, here.
fn device_here<'a, A: Element, D: Dimension>(d: &DeviceArray<A, D>) -> Result<Here<'a, A, D>> {
    #[cfg(feature = "cuda")]
    if let Some(gpu) = parla_gpu::current() {
        if gpu.context().cu_ctx() == d.buf.context().cu_ctx() {
            return Ok(Here::Device(d.clone()));
        }
        let buf = gpu.copy_from(&d.buf)?;
        return Ok(Here::Device(DeviceArray {
            buf: Arc::new(buf),
            dim: d.dim.clone(),
            column_major: d.column_major,
            device: gpu.device(),
        }));
    }
    Ok(Here::Host(CowArray::from(d.to_host()?)))
}

/// A copy of host data on `gpu`, in the data's own element order when it is contiguous
/// (row- or column-major), in row-major order otherwise.
#[cfg(feature = "cuda")]
pub(crate) fn upload<A: Element, D: Dimension>(
    gpu: &parla_gpu::GpuContext,
    v: ArrayView<'_, A, D>,
) -> Result<DeviceArray<A, D>> {
    let dim = v.raw_dim();
    let fortran = v.clone().reversed_axes();
    let (buf, column_major) = if let Some(s) = v.to_slice() {
        (gpu.upload(s)?, false)
    } else if let Some(s) = fortran.to_slice() {
        (gpu.upload(s)?, true)
    } else {
        (gpu.upload(&v.iter().copied().collect::<Vec<A>>())?, false)
    };
    Ok(DeviceArray {
        buf: Arc::new(buf),
        dim,
        column_major,
        device: gpu.device(),
    })
}
