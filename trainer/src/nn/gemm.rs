//! Thin wrapper around `ndarray::linalg::general_mat_mul` (matrixmultiply's sgemm) on
//! row-major slices, and [`gemv`], a direct product of one row with a matrix.
//!
//! [`gemm`] is used wherever results must not depend on the batch size (a sample's forward
//! pass gives the same bits alone or in a batch: sgemm computes each output the same way
//! whatever `m` is). [`gemv`] sums in another order, so it is used only where that property
//! is not needed and a single row is the common case: the input gradient of a Dense layer for
//! one sample (the float twin's attacks), where sgemm would pack the whole weight matrix on
//! every call for one row of output.

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

/// `c (1 x n) = alpha * a * b + beta * c` for a single row `a` (`1 x k`, stored either way
/// round: its data is the row). A transposed `b` (stored `n x k`) takes one dot product per
/// output, a plain one (`k x n`) one scaled row addition per input. With `beta == 0`, `c` is
/// overwritten without being read (as sgemm does).
pub(crate) fn gemv(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32]) {
    let n = c.len();
    let k = if b.trans { b.cols } else { b.rows };
    let x = &a.data[..k];
    let scale = |c: &mut f32, s: f32| *c = if beta == 0.0 { alpha * s } else { beta * *c + alpha * s };
    if b.trans {
        for (j, cj) in c.iter_mut().enumerate() {
            scale(cj, dot(x, &b.data[j * k..(j + 1) * k]));
        }
    } else {
        let mut acc = vec![0.0f32; n];
        for (l, &xl) in x.iter().enumerate() {
            for (s, &w) in acc.iter_mut().zip(&b.data[l * n..(l + 1) * n]) {
                *s += xl * w;
            }
        }
        for (cj, &s) in c.iter_mut().zip(&acc) {
            scale(cj, s);
        }
    }
}

/// `Σ x[i] y[i]` in eight interleaved partial sums (so the compiler can keep them in one
/// vector register), added pairwise at the end.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for ((a, &p), &q) in acc.iter_mut().zip(xs).zip(ys) {
            *a += p * q;
        }
    }
    for ((a, &p), &q) in acc.iter_mut().zip(xr).zip(yr) {
        *a += p * q;
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`gemv`] and [`gemm`] with one row against a plain triple loop (in f64), for every
    /// combination of transposes and for `beta` zero (c holding NaN, which must not leak)
    /// and non-zero.
    #[test]
    fn single_row_matches_the_definition() {
        let (k, n) = (37, 13);
        let a: Vec<f32> = (0..k).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let bn: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 17) as f32 - 8.0) / 7.0).collect();
        let mut bt = vec![0.0; k * n];
        for l in 0..k {
            for j in 0..n {
                bt[j * k + l] = bn[l * n + j];
            }
        }
        for (b, a) in [
            (Mat::n(&bn, k, n), Mat::n(&a, 1, k)),
            (Mat::t(&bt, n, k), Mat::n(&a, 1, k)),
            (Mat::n(&bn, k, n), Mat::t(&a, k, 1)),
            (Mat::t(&bt, n, k), Mat::t(&a, k, 1)),
        ] {
            for (beta, c0) in [(0.0f32, f32::NAN), (0.5, 2.0)] {
                let mut c = vec![c0; n];
                gemv(1.5, a, b, beta, &mut c);
                let mut c2 = vec![c0; n];
                gemm(1.5, a, b, beta, &mut c2, 1, n);
                for (j, (&cj, &c2j)) in c.iter().zip(&c2).enumerate() {
                    assert!((cj - c2j).abs() < 1e-4, "gemv {cj} vs gemm {c2j}");
                    let s: f64 = (0..k).map(|l| a.data[l] as f64 * bn[l * n + j] as f64).sum();
                    let want = 1.5 * s + if beta == 0.0 { 0.0 } else { beta as f64 * c0 as f64 };
                    assert!(
                        (cj as f64 - want).abs() < 1e-4,
                        "b.trans {} a.trans {} beta {beta}: {cj} vs {want}",
                        b.trans,
                        a.trans
                    );
                }
            }
        }
    }
}
