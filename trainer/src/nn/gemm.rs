//! Thin wrapper around `ndarray::linalg::general_mat_mul` (matrixmultiply's sgemm) on
//! row-major slices.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};

/// A row-major `rows x cols` matrix stored in a slice, optionally used transposed.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub trans: bool,
}

impl<'a> Mat<'a> {
    /// The matrix itself.
    pub fn n(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, trans: false }
    }
    /// The transpose of the stored `rows x cols` matrix.
    pub fn t(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, trans: true }
    }
    fn view(&self) -> ArrayView2<'a, f32> {
        let v = ArrayView2::from_shape((self.rows, self.cols), &self.data[..self.rows * self.cols])
            .expect("gemm: operand shape");
        if self.trans {
            v.reversed_axes()
        } else {
            v
        }
    }
}

/// `c (m x n, row-major) = alpha * a * b + beta * c`.
pub(crate) fn gemm(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], m: usize, n: usize) {
    let av = a.view();
    let bv = b.view();
    debug_assert_eq!(av.dim().0, m);
    debug_assert_eq!(bv.dim().1, n);
    debug_assert_eq!(av.dim().1, bv.dim().0);
    if m == 0 || n == 0 {
        return;
    }
    let mut cv = ArrayViewMut2::from_shape((m, n).strides((n, 1)), &mut c[..m * n]).expect("gemm: output shape");
    general_mat_mul(alpha, &av, &bv, beta, &mut cv);
}
