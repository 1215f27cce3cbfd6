use super::*;
use crate::kernels::aligned::ALIGN;
use crate::kernels::gemm::{GemmShape, gemm_reference};
use crate::kernels::testutil::{Product, rounded, values};

/// Runs `f` with each register tile shape in turn, whichever this build's own is: every shape
/// is tested on any machine.
fn each_shape(f: impl Fn()) {
    for shape in [Tiles::Wide, Tiles::Narrow] {
        shape.forced(&f);
    }
}

#[test]
fn matches_the_reference_product() {
    each_shape(|| {
        let shapes = [
            (1, 1, 1),
            (1, 9, 7),
            (3, 5, 8),
            (4, 32, 9),
            (5, 77, 33),
            (6, 40, 20),
            (11, 70, 33),
            (9, 64, 64),
            (16, 512, 128),
            (130, 70, 600),
            // A single row by groups of four panels, the last group clipped.
            (1, 250, 33),
            // Packings over `STREAMED_BYTES` (f32 and f64), whose tiles prefetch: 5 + 5 + 2
            // rows and 5 + 5 + 3 + 3 rows.
            (12, 520, 600),
            (16, 600, 520),
        ];
        // Under Miri only the first six: the larger ones (the cache-blocked loop order and the
        // prefetching tiles, with the same loads) would take many minutes to interpret.
        let shapes = if cfg!(miri) {
            &shapes[..6]
        } else {
            &shapes[..]
        };
        for &(m, n, k) in shapes {
            for trans in [false, true] {
                let p = Product::new(m, n, k, trans);
                // A reused buffer full of stale values, longer than the packing: packing must
                // overwrite every value the kernel reads.
                let len = PackedB::<f64>::packed_len(k, n) + 3 * m + 7;
                let pb = packed(PackedB::from_buffer(vec![f64::NAN; len]), &p.b, trans, k, n);
                let mut got = p.c0.clone();
                gemm_packed_acc(m, &p.a, &pb, &mut got);
                p.assert_matches(&got, 1e-12);
                let af: Vec<f32> = rounded(&p.a);
                let pf = packed(PackedB::new(), &rounded(&p.b), trans, k, n);
                let mut gotf: Vec<f32> = rounded(&p.c0);
                gemm_packed_acc(m, &af, &pf, &mut gotf);
                p.assert_matches(&gotf, 1e-4);
            }
        }
    });
}

/// `b` (`k x n`, or `n x k` when `trans`) packed into `into`.
fn packed<T: SimdFloat>(
    mut into: PackedB<T>,
    b: &[T],
    trans: bool,
    k: usize,
    n: usize,
) -> PackedB<T> {
    if trans {
        into.pack_transposed(b, n, k);
    } else {
        into.pack(b, k, n);
    }
    into
}

/// Operands of products over blocks of rows: `B` (`k x n`) and its packing, each block's
/// `A` and starting `C`, and a bias row.
struct Case {
    b: Vec<f32>,
    pb: PackedB<f32>,
    a: Vec<Vec<f32>>,
    c0: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

impl Case {
    fn new(ms: &[usize], n: usize, k: usize) -> Self {
        let b: Vec<f32> = values(1, k * n, 1.0);
        let mut pb = PackedB::new();
        pb.pack(&b, k, n);
        let per_block = |seed: u64, cols: usize| -> Vec<Vec<f32>> {
            ms.iter()
                .enumerate()
                .map(|(i, &m)| values(seed + i as u64, m * cols, 1.0))
                .collect()
        };
        Case {
            b,
            pb,
            a: per_block(2, k),
            c0: per_block(20, n),
            bias: values(9, n, 1.0),
        }
    }

    /// The blocks over `cs` (each block's `C`), block `biased` adding the bias row.
    fn rows<'a>(
        &'a self,
        cs: &'a mut [Vec<f32>],
        ms: &[usize],
        biased: usize,
    ) -> Vec<Rows<'a, f32>> {
        cs.iter_mut()
            .zip(&self.a)
            .zip(ms)
            .enumerate()
            .map(|(i, ((c, a), &m))| Rows {
                m,
                a,
                storage: AStorage::RowMajor,
                c,
                bias: (i == biased).then_some(&self.bias[..]),
            })
            .collect()
    }
}

#[test]
fn blocks_of_rows_match_each_block_alone() {
    each_shape(|| {
        // Blocks of 32, 6, 1 and 11 rows (tiles of 5, two of 3, the single-row path, and 5 + 3
        // + 3) over k > KB, and more than MB rows in one block; in f32 a packing over
        // `STREAMED_BYTES` (prefetching tiles) and a small one; a single row by exactly four
        // panels (two tiles of two), the last ragged. Under Miri only small cases.
        let p = panel::<f32>();
        let cases: &[(&[usize], usize, usize)] = if cfg!(miri) {
            &[(&[6, 1, 3], 20, 9), (&[1], 4 * p - 3, 5)]
        } else {
            &[
                (&[32, 6, 1, 11], 600, 520),
                (&[45, 1, 6], 75, 300),
                (&[1], 4 * p - 3, 40),
            ]
        };
        for &(ms, n, k) in cases {
            let case = Case::new(ms, n, k);
            // The second block adds a bias row: the same as adding it to C first.
            let biased = 1;
            let mut alone = case.c0.clone();
            for (i, ((c, a), &m)) in alone.iter_mut().zip(&case.a).zip(ms).enumerate() {
                if i == biased {
                    for row in c.chunks_exact_mut(n) {
                        for (x, &y) in row.iter_mut().zip(&case.bias) {
                            *x += y;
                        }
                    }
                }
                gemm_packed_acc(m, a, &case.pb, c);
            }
            let mut together = case.c0.clone();
            gemm_packed_acc_rows(&mut case.rows(&mut together, ms, biased), &case.pb);
            for (i, (x, y)) in alone.iter().zip(&together).enumerate() {
                for (j, (p, q)) in x.iter().zip(y).enumerate() {
                    assert_eq!(p.to_bits(), q.to_bits(), "{ms:?} block {i} value {j}");
                }
            }
            // Against the reference too: a block that was skipped would still match itself.
            for (i, ((c, a), (&m, c0))) in together
                .iter()
                .zip(&case.a)
                .zip(ms.iter().zip(&case.c0))
                .enumerate()
            {
                let s = GemmShape {
                    m,
                    k,
                    n,
                    trans_a: false,
                    trans_b: false,
                };
                let wide = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| f64::from(x)).collect() };
                let mut want = wide(c0);
                if i == biased {
                    for row in want.chunks_exact_mut(n) {
                        for (x, &y) in row.iter_mut().zip(&case.bias) {
                            *x += f64::from(y);
                        }
                    }
                }
                gemm_reference(s, 1.0, &wide(a), &wide(&case.b), 1.0, &mut want);
                for (g, w) in c.iter().zip(&want) {
                    assert!((f64::from(*g) - w).abs() < 1e-3, "{ms:?}: {g} vs {w}");
                }
            }
        }
    });
}

#[test]
fn column_ranges_match_the_whole_product() {
    each_shape(|| {
        // The columns of a product cut into ranges of whole panels, each range computed into a
        // buffer of its own (one with a wider row stride than it needs), in either order of
        // the panels, give the whole product's values bit for bit, bias included; the last
        // panel is ragged. A single row of 7 panels runs groups of 4, 2 and 1; of exactly 4,
        // two groups of 2, whose order the sweep reverses. Under Miri only small cases.
        let p = panel::<f32>();
        let cases: &[(&[usize], usize, usize, &[usize])] = if cfg!(miri) {
            &[(&[6, 1, 3], p + 6, 9, &[p]), (&[1], 4 * p - 3, 5, &[])]
        } else {
            &[
                (&[32, 6, 1, 11], 600, 520, &[2 * p, 7 * p]),
                (&[1], 300, 75, &[2 * p]),
                (&[1], 7 * p - 5, 30, &[]),
                (&[1], 9 * p, 12, &[4 * p]),
            ]
        };
        let orders = [Sweep::Ascending, Sweep::Descending];
        for (&(ms, n, k, cuts), order) in cases.iter().flat_map(|c| orders.map(|o| (c, o))) {
            let case = Case::new(ms, n, k);
            let mut whole = case.c0.clone();
            gemm_packed_acc_rows(&mut case.rows(&mut whole, ms, 0), &case.pb);
            let bounds: Vec<usize> = [0].iter().chain(cuts).chain(&[n]).copied().collect();
            for (r, w) in bounds.windows(2).enumerate() {
                let cols = w[0]..w[1];
                // The middle range keeps 3 values of padding after each row.
                let ldc = cols.len() + if r == 1 { 3 } else { 0 };
                let mut parts: Vec<Vec<f32>> = case
                    .c0
                    .iter()
                    .zip(ms)
                    .map(|(c, &m)| {
                        let mut part = vec![f32::NAN; m * ldc];
                        for (dst, src) in part.chunks_exact_mut(ldc).zip(c.chunks_exact(n)) {
                            dst[..cols.len()].copy_from_slice(&src[cols.clone()]);
                        }
                        part
                    })
                    .collect();
                let mut blocks = case.rows(&mut parts, ms, 0);
                gemm_packed_acc_cols(&mut blocks, &case.pb, cols.clone(), ldc, order);
                for (i, (part, full)) in parts.iter().zip(&whole).enumerate() {
                    for (row, (got, want)) in
                        part.chunks_exact(ldc).zip(full.chunks_exact(n)).enumerate()
                    {
                        for (j, (x, y)) in got.iter().zip(&want[cols.clone()]).enumerate() {
                            let at = cols.start + j;
                            assert_eq!(
                                x.to_bits(),
                                y.to_bits(),
                                "{ms:?} {order:?} block {i} ({row}, {at})"
                            );
                        }
                        // The padding is left alone.
                        assert!(got[cols.len()..].iter().all(|x| x.is_nan()));
                    }
                }
            }
        }
    });
}

#[test]
#[should_panic(expected = "do not fit")]
fn column_ranges_start_on_a_panel() {
    let (k, n) = (2, 2 * panel::<f32>());
    let mut pb = PackedB::new();
    pb.pack(&vec![1.0f32; k * n], k, n);
    let a = vec![1.0f32; k];
    let mut c = vec![0.0f32; n];
    let mut blocks = [Rows {
        m: 1,
        a: &a,
        storage: AStorage::RowMajor,
        c: &mut c,
        bias: None,
    }];
    gemm_packed_acc_cols(&mut blocks, &pb, 1..n, n, Sweep::Ascending);
}

/// The row-major `a` (rows of `k` values) stored column by column, each column `ld` values
/// after the one before; the padding below each column is NaN, which would show in any value
/// that read it.
fn by_columns<T: crate::Float>(a: &[T], k: usize, ld: usize) -> Vec<T> {
    let mut t = vec![T::from_f64(f64::NAN); k * ld];
    for (i, row) in a.chunks_exact(k).enumerate() {
        for (s, &v) in row.iter().enumerate() {
            t[s * ld + i] = v;
        }
    }
    t
}

#[test]
fn a_by_columns_is_copied_where_its_steps_fall_in_one_set_of_l1() {
    use super::tiling::copies_a;
    const KIB: usize = 1 << 10;
    // (columns apart in bytes, panels of B reading each copy, narrow copies, wide copies), as
    // measured: wide tiles with one panel only from a page apart.
    let cases = [
        (KIB, 4, false, false),
        (2 * KIB - 4, 4, false, false),
        (2 * KIB, 1, true, false),
        (2 * KIB, 2, true, true),
        (3 * KIB, 1, true, false),
        (3 * KIB, 4, true, true),
        (4 * KIB, 1, true, true),
        (8 * KIB, 8, true, true),
    ];
    for (ld, panels, narrow, wide) in cases {
        assert_eq!(
            copies_a(Tiles::Narrow, ld, panels),
            narrow,
            "narrow, {ld} B, {panels}"
        );
        assert_eq!(
            copies_a(Tiles::Wide, ld, panels),
            wide,
            "wide, {ld} B, {panels}"
        );
    }
}

#[test]
fn a_stored_by_columns_gives_the_row_major_values() {
    each_shape(|| {
        // Each block's `A` also stored column by column, `ld` = m + 3, m + 600 and m + 1100
        // apart (the transpose of a wider row-major matrix, read in place, or copied block by
        // block): every value the same bit for bit, over tiles of 5, 3 + 3 and 2 rows, the
        // single-row path and k > KB. Under Miri only small cases, one over two blocks of k.
        let cases: &[(&[usize], usize, usize)] = if cfg!(miri) {
            &[(&[6, 1, 3], 20, 9), (&[7], 16, 130)]
        } else {
            &[(&[32, 6, 1, 11], 150, 300), (&[45, 2], 64, 130)]
        };
        for &(ms, n, k) in cases {
            let case = Case::new(ms, n, k);
            let mut by_rows = case.c0.clone();
            gemm_packed_acc_rows(&mut case.rows(&mut by_rows, ms, 0), &case.pb);
            for pad in [3, 600, 1100] {
                // Column s of block i's A at `cols[i][s * (m + pad)..]`; the padding is NaN, which
                // would show in any value that read it. Columns 2 KiB or more apart are copied
                // block by block by the narrow tiles; by the wide ones from 4 KiB apart, or from
                // 2 KiB where more than one panel reads the copy (n = 150, not n = 64).
                let cols: Vec<Vec<f32>> = case
                    .a
                    .iter()
                    .zip(ms)
                    .map(|(a, &m)| by_columns(a, k, m + pad))
                    .collect();
                let mut by_cols = case.c0.clone();
                let mut blocks: Vec<Rows<'_, f32>> = by_cols
                    .iter_mut()
                    .zip(&cols)
                    .zip(ms)
                    .enumerate()
                    .map(|(i, ((c, a), &m))| Rows {
                        m,
                        a,
                        storage: AStorage::ColMajor { ld: m + pad },
                        c,
                        bias: (i == 0).then_some(&case.bias[..]),
                    })
                    .collect();
                gemm_packed_acc_rows(&mut blocks, &case.pb);
                for (i, (x, y)) in by_rows.iter().zip(&by_cols).enumerate() {
                    for (j, (p, q)) in x.iter().zip(y).enumerate() {
                        assert_eq!(
                            p.to_bits(),
                            q.to_bits(),
                            "{ms:?} ld m + {pad}: block {i} value {j}"
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn a_by_columns_copied_gives_the_row_major_values_in_f64() {
    // In f64 a panel is half as many columns and a column twice the bytes: `A` by columns
    // `m + 600` apart (4.8 KiB, copied block by block by both tile shapes) gives the values
    // of `A` by rows bit for bit, over several row blocks and blocks of k.
    each_shape(|| {
        let (m, n, k) = if cfg!(miri) {
            (6, 9, 130)
        } else {
            (45, 70, 300)
        };
        let ld = m + 600;
        let a: Vec<f64> = values(2, m * k, 1.0);
        let b: Vec<f64> = values(3, k * n, 1.0);
        let c0: Vec<f64> = values(4, m * n, 1.0);
        let mut pb = PackedB::new();
        pb.pack(&b, k, n);
        let cols = by_columns(&a, k, ld);
        let run = |a: &[f64], storage: AStorage| {
            let mut c = c0.clone();
            gemm_packed_acc_rows(
                &mut [Rows {
                    m,
                    a,
                    storage,
                    c: &mut c,
                    bias: None,
                }],
                &pb,
            );
            c
        };
        let (by_rows, by_cols) = (
            run(&a, AStorage::RowMajor),
            run(&cols, AStorage::ColMajor { ld }),
        );
        for (j, (x, y)) in by_rows.iter().zip(&by_cols).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "{m}x{n}x{k} value {j}");
        }
    });
}

#[test]
fn setting_c_equals_adding_onto_zeros() {
    each_shape(|| {
        // C full of NaN beforehand, which any value read from it would carry: blocks of 32, 6,
        // 1 and 11 rows (the second with a bias) over k > KB, the last panel ragged (a clipped
        // tile); then no steps of k at all, which sets C to zero or the bias. Under Miri small.
        let cases: &[(&[usize], usize, usize)] = if cfg!(miri) {
            &[(&[6, 1], 20, 9), (&[3], 20, 0)]
        } else {
            &[(&[32, 6, 1, 11], 150, 300), (&[6, 1], 70, 0)]
        };
        for &(ms, n, k) in cases {
            let case = Case::new(ms, n, k);
            let zeros: Vec<Vec<f32>> = ms.iter().map(|&m| vec![0.0; m * n]).collect();
            let mut added = zeros.clone();
            gemm_packed_acc_rows(&mut case.rows(&mut added, ms, 1), &case.pb);
            let mut set: Vec<Vec<f32>> = ms.iter().map(|&m| vec![f32::NAN; m * n]).collect();
            gemm_packed_set_rows(&mut case.rows(&mut set, ms, 1), &case.pb);
            for (i, (x, y)) in added.iter().zip(&set).enumerate() {
                for (j, (p, q)) in x.iter().zip(y).enumerate() {
                    assert_eq!(p.to_bits(), q.to_bits(), "{ms:?} k {k} block {i} value {j}");
                }
            }
        }
        // One block of one row, through the single-block form.
        let case = Case::new(&[1], 70, 40);
        let mut added = vec![0.0f32; 70];
        gemm_packed_acc(1, &case.a[0], &case.pb, &mut added);
        let mut set = vec![f32::NAN; 70];
        gemm_packed_set(1, &case.a[0], &case.pb, &mut set);
        assert_eq!(added, set);
    });
}

#[test]
fn a_b_packed_block_by_block_gives_the_whole_packing_s_values() {
    each_shape(|| {
        // `B` in parts of 37 and the rest rows (a part boundary inside the first block of k),
        // over k from none to past two blocks of KB, `A` stored by columns `m + 3` apart, with
        // and without a bias: bit for bit the values of packing `B` whole. `C` starts as NaN,
        // which any value read from it would carry. Under Miri small.
        let cases: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(6, 20, 9), (3, 20, 0)]
        } else {
            &[
                (12, 70, 0),
                (12, 70, 1),
                (23, 150, 37),
                (7, 70, 128),
                (31, 130, 300),
            ]
        };
        for &(m, n, k) in cases {
            let (a, b, bias): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                values(1, k * (m + 3), 1.0),
                values(2, k * n, 1.0),
                values(3, n, 1.0),
            );
            let split = 37.min(k) * n;
            let parts = [&b[..split], &b[split..]];
            for with_bias in [false, true] {
                let bias = with_bias.then_some(&bias[..]);
                let rows = |c| Rows {
                    m,
                    a: &a,
                    storage: AStorage::ColMajor { ld: m + 3 },
                    c,
                    bias,
                };
                let mut whole = PackedB::new();
                whole.pack_stacked(&parts, n);
                let mut want = vec![f32::NAN; m * n];
                gemm_packed_set_rows(&mut [rows(&mut want)], &whole);
                let len = blocked_b_len::<f32>(k, n);
                let mut blocked = PackedB::from_buffer(vec![f32::NAN; len]);
                let mut got = vec![f32::NAN; m * n];
                gemm_set_blocked_b(rows(&mut got), &parts, n, &mut blocked);
                assert!(
                    blocked.values().len() <= len,
                    "{m}x{n}x{k}: the packing grew"
                );
                for (j, (p, q)) in want.iter().zip(&got).enumerate() {
                    assert_eq!(
                        p.to_bits(),
                        q.to_bits(),
                        "{m}x{n}x{k} bias {with_bias}: value {j}"
                    );
                }
            }
        }
    });
}

#[test]
fn b_read_in_runs_gives_the_runs_copied_out_s_values() {
    // `runs` runs of `rows` rows, `stride` values apart in one buffer (a shard's rows of each
    // time step of `[T, B, n]`), packed where they lie: bit for bit the values of packing the
    // runs copied out into one matrix. Runs of 1 (one per block of k and more), 24 (not
    // dividing KB = 128) and 32 rows, none, and runs back to back (`stride = rows * n`).
    let cases: &[(usize, usize, usize, usize, usize)] = if cfg!(miri) {
        &[(5, 20, 3, 4, 60)]
    } else {
        &[
            (12, 70, 24, 13, 70 * 64),
            (7, 33, 1, 300, 40),
            (9, 64, 32, 5, 64 * 32),
            (9, 64, 32, 0, 64 * 64),
            (20, 17, 24, 11, 17 * 40),
        ]
    };
    for &(m, n, rows, runs, stride) in cases {
        let k = rows * runs;
        let src: Vec<f32> = values(1, (runs.max(1) - 1) * stride + rows * n, 1.0);
        let a: Vec<f32> = values(2, k * m, 1.0);
        let copied: Vec<f32> = (0..runs)
            .flat_map(|r| src[r * stride..r * stride + rows * n].iter().copied())
            .collect();
        let block = |c| Rows {
            m,
            a: &a,
            storage: AStorage::ColMajor { ld: m },
            c,
            bias: None,
        };
        let mut want = vec![f32::NAN; m * n];
        gemm_set_blocked_b(block(&mut want), &[&copied], n, &mut PackedB::new());
        let mut got = vec![f32::NAN; m * n];
        let b = RowRuns {
            src: &src,
            rows,
            stride,
            runs,
        };
        gemm_set_blocked_b_runs(block(&mut got), b, n, &mut PackedB::new());
        for (j, (p, q)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                p.to_bits(),
                q.to_bits(),
                "{m}x{n}, {runs} runs of {rows}: value {j}"
            );
        }
    }
}

#[test]
#[should_panic(expected = "do not fit")]
fn b_read_in_runs_must_fit_its_buffer() {
    let mut c = vec![0.0f32; 4];
    let block = Rows {
        m: 2,
        a: &[1.0; 12],
        storage: AStorage::ColMajor { ld: 2 },
        c: &mut c,
        bias: None,
    };
    // Three runs of two rows of 2, 6 apart, need 16 values.
    let b = RowRuns {
        src: &[1.0; 15],
        rows: 2,
        stride: 6,
        runs: 3,
    };
    gemm_set_blocked_b_runs(block, b, 2, &mut PackedB::new());
}

#[test]
#[should_panic(expected = "stored by columns")]
fn a_b_packed_block_by_block_needs_a_by_columns() {
    let mut c = vec![0.0f32; 4];
    let block = Rows {
        m: 2,
        a: &[1.0; 4],
        storage: AStorage::RowMajor,
        c: &mut c,
        bias: None,
    };
    gemm_set_blocked_b(block, &[&[1.0; 4]], 2, &mut PackedB::new());
}

#[test]
fn stacked_parts_pack_as_their_rows_in_turn() {
    // Parts of 3, 0 and 5 rows of a ragged width pack as the one matrix of their 8 rows.
    let n = panel::<f32>() + 5;
    let b: Vec<f32> = values(4, 8 * n, 1.0);
    let (mut whole, mut stacked) = (PackedB::new(), PackedB::new());
    whole.pack(&b, 8, n);
    stacked.pack_stacked(&[&b[..3 * n], &[], &b[3 * n..]], n);
    assert_eq!((stacked.k(), stacked.n()), (8, n));
    assert_eq!(whole.values(), stacked.values());
}

#[test]
#[should_panic(expected = "not whole rows")]
fn stacked_parts_are_whole_rows() {
    PackedB::<f32>::new().pack_stacked(&[&[1.0; 7]], 3);
}

#[test]
#[should_panic(expected = "buffers too small")]
fn a_stored_by_columns_needs_room_for_its_rows() {
    // `ld` below the rows: columns would overlap.
    let (k, n) = (3, panel::<f32>());
    let mut pb = PackedB::new();
    pb.pack(&vec![1.0f32; k * n], k, n);
    let a = vec![1.0f32; 4 * k];
    let mut c = vec![0.0f32; 4 * n];
    let mut blocks = [Rows {
        m: 4,
        a: &a,
        storage: AStorage::ColMajor { ld: 3 },
        c: &mut c,
        bias: None,
    }];
    gemm_packed_acc_rows(&mut blocks, &pb);
}

#[test]
fn a_transposed_packing_places_every_value() {
    // Whole panels go by blocks transposed in registers, a ragged one and the rows past the
    // last whole block value by value: every value where the definition puts it, the
    // padding zero. Parts of 37 and 16 rows (one of 16 under Miri).
    let p = panel::<f32>();
    let (n, ks): (usize, &[usize]) = if cfg!(miri) {
        (p + 3, &[16])
    } else {
        (2 * p + 7, &[37, 16])
    };
    let ws: Vec<Vec<f32>> = ks
        .iter()
        .enumerate()
        .map(|(i, &ki)| values(i as u64 + 3, n * ki, 1.0))
        .collect();
    let parts: Vec<(&[f32], usize)> = ws
        .iter()
        .map(Vec::as_slice)
        .zip(ks.iter().copied())
        .collect();
    let mut pb = PackedB::new();
    pb.pack_transposed_stacked(&parts, n);
    let k: usize = ks.iter().sum();
    assert_eq!((pb.k(), pb.n()), (k, n));
    let mut row = 0;
    for (w, &ki) in ws.iter().zip(ks) {
        for r in 0..ki {
            for j in 0..n.div_ceil(p) * p {
                let got = pb.values()[((j / p) * k + row + r) * p + j % p];
                let want = if j < n { w[j * ki + r] } else { 0.0 };
                assert_eq!(got.to_bits(), want.to_bits(), "row {} column {j}", row + r);
            }
        }
        row += ki;
    }
}

#[test]
fn stacked_weights_give_the_products_in_turn() {
    // `[x h] [W_ih^T; W_hh^T]` in one product is `x W_ih^T` then `h W_hh^T` onto the same
    // C, bit for bit: a single row and a tile of rows, the last panel ragged.
    let (n, ki, kh) = if cfg!(miri) {
        (20, 3, 5)
    } else {
        (150, 37, 64)
    };
    let w_ih: Vec<f32> = values(1, n * ki, 1.0);
    let w_hh: Vec<f32> = values(2, n * kh, 1.0);
    let mut stacked = PackedB::new();
    stacked.pack_transposed_stacked(&[(&w_ih, ki), (&w_hh, kh)], n);
    assert_eq!((stacked.k(), stacked.n()), (ki + kh, n));
    let (mut pi, mut ph) = (PackedB::new(), PackedB::new());
    pi.pack_transposed(&w_ih, n, ki);
    ph.pack_transposed(&w_hh, n, kh);
    for m in [1, 7] {
        let x: Vec<f32> = values(3, m * ki, 1.0);
        let h: Vec<f32> = values(4, m * kh, 1.0);
        let xh: Vec<f32> = x
            .chunks_exact(ki)
            .zip(h.chunks_exact(kh))
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect();
        let c0: Vec<f32> = values(5, m * n, 1.0);
        let mut in_turn = c0.clone();
        gemm_packed_acc(m, &x, &pi, &mut in_turn);
        gemm_packed_acc(m, &h, &ph, &mut in_turn);
        let mut once = c0.clone();
        gemm_packed_acc(m, &xh, &stacked, &mut once);
        for (j, (a, b)) in in_turn.iter().zip(&once).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{m} rows, value {j}");
        }
    }
}

#[test]
fn packed_values_start_on_a_cache_line() {
    // Small buffers (from the heap's bins) and large ones (mapped pages, 16 bytes past a
    // page boundary with glibc), fresh, reused for another shape and cloned, f32 and f64.
    fn check<T: crate::tensor::Float>(shapes: &[(usize, usize)]) {
        let mut reused = PackedB::<T>::new();
        for &(k, n) in shapes {
            let b: Vec<T> = values(k as u64, k * n, 1.0);
            let buf = vec![T::default(); PackedB::<T>::packed_len(k, n)];
            let start = buf.as_ptr();
            let mut fresh = PackedB::from_buffer(buf);
            fresh.pack(&b, k, n);
            reused.pack_transposed(&b, n, k);
            let copy = reused.clone();
            assert_eq!(copy.values(), reused.values(), "{k}x{n}: clone");
            for pb in [&fresh, &reused, &copy] {
                let at = pb.values().as_ptr() as usize;
                if !cfg!(miri) {
                    assert_eq!(at % ALIGN, 0, "{k}x{n}: values at {at:#x}");
                }
                assert_eq!(
                    pb.values().len(),
                    n.div_ceil(panel::<T>()) * k * panel::<T>()
                );
            }
            // A buffer of `packed_len` values is used as it is, whatever its alignment.
            let back = fresh.into_buffer();
            assert_eq!(back.as_ptr(), start, "{k}x{n} grew its buffer");
        }
    }
    // Under Miri (which does not model the allocator's alignment anyway) only small ones.
    let shapes: &[(usize, usize)] = if cfg!(miri) {
        &[(1, 1), (3, 7), (9, 33)]
    } else {
        &[(1, 1), (3, 7), (64, 100), (512, 2048), (256, 1024), (9, 33)]
    };
    check::<f32>(shapes);
    check::<f64>(shapes);
}

#[test]
fn a_row_does_not_depend_on_its_neighbours() {
    each_shape(|| {
        // k > KB: the 11-row product (tiles of 5, 3 and 3 rows) is cut into k blocks, a single
        // row is not.
        let (m, n, k) = (11, 75, 300);
        let a: Vec<f32> = values(1, m * k, 1.0);
        let b: Vec<f32> = values(2, n * k, 1.0);
        let mut pb = PackedB::new();
        pb.pack(&b, k, n);
        let mut whole = vec![0.0f32; m * n];
        gemm_packed_acc(m, &a, &pb, &mut whole);
        for i in 0..m {
            let mut one = vec![0.0f32; n];
            gemm_packed_acc(1, &a[i * k..(i + 1) * k], &pb, &mut one);
            for j in 0..n {
                assert_eq!(
                    one[j].to_bits(),
                    whole[i * n + j].to_bits(),
                    "row {i} col {j}"
                );
            }
        }
    });
}

#[test]
fn both_tile_shapes_give_the_same_values_bit_for_bit() {
    // Every value of C is accumulated by the same fused multiply-adds in the same order
    // whichever the shape of the tile it falls in: rows in tiles of 5 or 6 with each remainder
    // (7 = 4 + 3 narrow, 6 = 3 + 3 wide), a single row, A by rows and by columns, k over KB,
    // a ragged last panel, f32 and f64.
    fn check<T: crate::Float>(m: usize, n: usize, k: usize) {
        let a: Vec<T> = values(3, m * k, 1.0);
        let b: Vec<T> = values(4, n * k, 1.0);
        let c0: Vec<T> = values(5, m * n, 1.0);
        let mut pb = PackedB::new();
        pb.pack(&b, k, n);
        let run = |shape: Tiles, storage: AStorage| {
            let mut c = c0.clone();
            shape.forced(|| {
                let mut rows = [Rows {
                    m,
                    a: &a,
                    storage,
                    c: &mut c,
                    bias: None,
                }];
                gemm_packed_acc_rows(&mut rows, &pb)
            });
            c
        };
        // A read by columns: the same values as the transpose of a row-major `k x m`.
        for storage in [AStorage::RowMajor, AStorage::ColMajor { ld: m }] {
            let (w, nw) = (run(Tiles::Wide, storage), run(Tiles::Narrow, storage));
            for (j, (x, y)) in w.iter().zip(&nw).enumerate() {
                // Exact in f64 for f32 values too, so the bits compare the values exactly.
                let (x, y) = (x.to_f64().to_bits(), y.to_f64().to_bits());
                assert_eq!(x, y, "{m}x{n}x{k} {storage:?} value {j}");
            }
        }
    }
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(7, 20, 9), (1, 40, 3)]
    } else {
        &[
            (1, 200, 33),
            (2, 64, 7),
            (5, 65, 130),
            (6, 64, 20),
            (7, 100, 40),
            (12, 17, 3),
            (13, 300, 260),
            (64, 1024, 256),
            (41, 70, 129),
            (13, 70, 530),
        ]
    };
    for &(m, n, k) in shapes {
        check::<f32>(m, n, k);
        check::<f64>(m, n, k);
    }
}

#[test]
fn both_loop_orders_give_the_same_values_bit_for_bit() {
    use super::tiling::LoopOrder;
    // Row blocks outside or blocks of k outside: every value of C is accumulated in the same
    // order, over several row blocks (MB = 40) and blocks of k (KB = 128, and the narrow
    // tiles' 512), several blocks of rows, A by rows and by columns, both tile shapes.
    fn check<T: crate::Float>(m: usize, n: usize, k: usize) {
        let a: Vec<T> = values(3, m * k, 1.0);
        let a2: Vec<T> = values(6, 7 * k, 1.0);
        let b: Vec<T> = values(4, n * k, 1.0);
        let c0: Vec<T> = values(5, m * n, 1.0);
        let mut pb = PackedB::new();
        pb.pack(&b, k, n);
        let run = |order: LoopOrder, shape: Tiles, storage: AStorage| {
            let (mut c, mut c2) = (c0.clone(), c0[..7 * n].to_vec());
            order.forced(|| {
                shape.forced(|| {
                    let mut rows = [
                        Rows {
                            m,
                            a: &a,
                            storage,
                            c: &mut c,
                            bias: None,
                        },
                        Rows {
                            m: 7,
                            a: &a2,
                            storage: AStorage::RowMajor,
                            c: &mut c2,
                            bias: None,
                        },
                    ];
                    gemm_packed_acc_rows(&mut rows, &pb)
                })
            });
            c.extend(c2);
            c
        };
        // Under Miri one tile shape and A by rows: the loops around the tiles are the same.
        let (shapes, storages): (&[Tiles], &[AStorage]) = if cfg!(miri) {
            (&[Tiles::Wide], &[AStorage::RowMajor])
        } else {
            (
                &[Tiles::Wide, Tiles::Narrow],
                &[AStorage::RowMajor, AStorage::ColMajor { ld: m }],
            )
        };
        for &shape in shapes {
            for &storage in storages {
                let r = run(LoopOrder::RowsOuter, shape, storage);
                let kk = run(LoopOrder::KOuter, shape, storage);
                for (j, (x, y)) in r.iter().zip(&kk).enumerate() {
                    let (x, y) = (x.to_f64().to_bits(), y.to_f64().to_bits());
                    assert_eq!(x, y, "{m}x{n}x{k} {shape:?} {storage:?} value {j}");
                }
            }
        }
    }
    if cfg!(miri) {
        check::<f32>(41, 8, 129);
    } else {
        for (m, n, k) in [(41, 17, 130), (95, 70, 300), (130, 33, 1030), (81, 64, 257)] {
            check::<f32>(m, n, k);
            check::<f64>(m, n, k);
        }
    }
    // And the order follows the size of B: all of a small one stays in L2, 1 TiB does not.
    assert_eq!(LoopOrder::current(64 << 10), LoopOrder::RowsOuter);
    assert_eq!(LoopOrder::current(1 << 40), LoopOrder::KOuter);
}

#[test]
fn the_loop_order_follows_the_share_of_l2_that_b_takes() {
    use super::tiling::LoopOrder::{self, KOuter, RowsOuter};
    const KIB: usize = 1 << 10;
    // (B in KiB, L2 in KiB, order): Intel family 6 model 207 (2 MiB L2), a medium LSTM's dX
    // (1 MiB) rows outside, 4 MiB not; Intel family 6 model 106 (1.25 MiB), 768 KiB rows
    // outside, 1 MiB not; AMD Zen 5 (1 MiB) and Zen 3 (512 KiB), as at half the L2 for the
    // benchmarks' sizes.
    let cases = [
        (1024, 2048, RowsOuter),
        (4096, 2048, KOuter),
        (768, 1280, RowsOuter),
        (1024, 1280, KOuter),
        (512, 1024, RowsOuter),
        (768, 1024, KOuter),
        (256, 512, RowsOuter),
        (512, 512, KOuter),
    ];
    for (b, l2, order) in cases {
        assert_eq!(
            LoopOrder::choose(b * KIB, l2 * KIB),
            order,
            "B {b} KiB, L2 {l2} KiB"
        );
    }
    // No overflow for a B of any size.
    assert_eq!(LoopOrder::choose(usize::MAX, 1 << 20), KOuter);
}

#[test]
fn every_small_shape_matches_the_reference_in_each_tile_shape() {
    // Every row count over two row blocks (MB = 40), every column count over two panels
    // (ragged vectors and panels), setting and adding, each tile shape.
    let p = panel::<f32>();
    let (ms, ns) = if cfg!(miri) {
        (1..4, p - 1..p + 2)
    } else {
        (1..48, 1..2 * p + 2)
    };
    let k = 5;
    each_shape(|| {
        for m in ms.clone() {
            for n in ns.clone() {
                let a: Vec<f64> = values(6, m * k, 1.0);
                let b: Vec<f64> = values(7, n * k, 1.0);
                let mut pb = PackedB::new();
                pb.pack(&b, k, n);
                let s = GemmShape {
                    m,
                    k,
                    n,
                    trans_a: false,
                    trans_b: false,
                };
                let mut want = vec![0.0; m * n];
                gemm_reference(s, 1.0, &a, &b, 1.0, &mut want);
                let mut got = vec![f64::NAN; m * n];
                gemm_packed_set(m, &a, &pb, &mut got);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 1e-12, "{m}x{n}x{k} value {j}: {g} vs {w}");
                }
            }
        }
    });
}
