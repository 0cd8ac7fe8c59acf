//! Element-wise and per-row operations, with ggml's numerics (accumulation widths, formula
//! shapes) so that our hidden states track llama.cpp's closely enough for identical tokens.

use half::f16;

use super::config::RopeStyle;

/// RMS-normalizes each row of `x` in place and multiplies by `weight` (one row's length).
///
/// Like ggml: squares summed in f64, the mean and scale in f32, `x * scale` then `* weight`.
pub(crate) fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    for row in x.chunks_exact_mut(n) {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = (*v * scale) * w;
        }
    }
}

/// `acc += x`, element-wise.
pub(crate) fn add_assign(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// Adds a bias row to every row of `x`.
pub(crate) fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

/// `gate = silu(gate) * up`, with ggml's vectorized exponential (see [`v_expf`]).
pub(crate) fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked on the line above.
        return unsafe { swiglu_fma(gate, up) };
    }
    swiglu_portable(gate, up);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    swiglu_portable(gate, up);
}

#[inline(always)]
fn swiglu_portable(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + v_expf(-x)) * u;
    }
}

/// `exp(x)` as ggml's SIMD `ggml_v_expf` computes it (a range reduction and a degree-5
/// polynomial, all fused multiply-adds; within 1.5 ulp of the true value). llama.cpp's SiLU
/// uses it, so using the same formula keeps activations bit-identical.
#[inline(always)]
pub(crate) fn v_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000);
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n > 0.0 { f32::INFINITY } else { 0.0 };
    }
    // j · 2ⁿ with one rounding, as `vscalefps` does.
    let two_n = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (f64::from(j) * two_n) as f32
}

/// `gate = gelu(gate) * up`, with gelu evaluated as ggml's f16 table does: on the input
/// rounded to f16, result rounded to f16. Like ggml we look the result up in a table of all
/// 65536 f16 inputs (built once): `tanh` per element cost Gemma's prefill ~9 % of its time.
pub(crate) fn geglu(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            table[usize::from(f16::from_f32(x).to_bits())]
        };
        *g = y * u;
    }
}

/// `f16(gelu_tanh(x))` as f32 for every f16 bit pattern `x`.
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())).to_f32())
            .collect()
    })
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    // `1 + a·x·x` is contracted to a fused multiply-add in llama.cpp's build.
    0.5 * x * (1.0 + crate::mathf::tanhf(SQRT_2_OVER_PI * x * (COEF_A * x).mul_add(x, 1.0)))
}

/// Rotary angles of one position: `cos` and `sin` for each rotated pair, computed as ggml
/// does (theta multiplied down pair by pair in f32).
pub(crate) fn rope_angles(pos: usize, base: f32, rope_dim: usize, out: &mut [f32]) {
    let theta_scale = crate::mathf::powf(base, -2.0 / rope_dim as f32);
    let mut theta = pos as f32;
    for pair in out.chunks_exact_mut(2) {
        pair[0] = crate::mathf::cosf(theta);
        pair[1] = crate::mathf::sinf(theta);
        theta *= theta_scale;
    }
}

/// Rotates the first `rope_dim` dims of each head in `x` (one position, `n_head` heads of
/// `head_dim`) by the angles from [`rope_angles`].
pub(crate) fn rope(
    x: &mut [f32],
    head_dim: usize,
    rope_dim: usize,
    angles: &[f32],
    style: RopeStyle,
) {
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Adjacent => {
                for (pair, cs) in head[..rope_dim]
                    .chunks_exact_mut(2)
                    .zip(angles.chunks_exact(2))
                {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0.mul_add(cs[0], -(x1 * cs[1]));
                    pair[1] = x0.mul_add(cs[1], x1 * cs[0]);
                }
            }
            RopeStyle::Halves => {
                let half = rope_dim / 2;
                for (i, cs) in angles.chunks_exact(2).enumerate().take(half) {
                    let (x0, x1) = (head[i], head[i + half]);
                    head[i] = x0.mul_add(cs[0], -(x1 * cs[1]));
                    head[i + half] = x0.mul_add(cs[1], x1 * cs[0]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        rms_norm(&mut x, &[1.0, 1.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] - 4.0 / r).abs() < 1e-6);
        assert!(x[2] == 0.0 || x[2].is_nan());
    }

    #[test]
    fn rope_position_zero_is_identity() {
        let mut angles = vec![0.0; 8];
        rope_angles(0, 10000.0, 8, &mut angles);
        let orig: Vec<f32> = (0..8).map(|i| i as f32).collect();
        for style in [RopeStyle::Adjacent, RopeStyle::Halves] {
            let mut x = orig.clone();
            rope(&mut x, 8, 8, &angles, style);
            assert_eq!(x, orig);
        }
    }

    #[test]
    fn rope_preserves_pair_norms() {
        let mut angles = vec![0.0; 4];
        rope_angles(7, 10000.0, 4, &mut angles);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope(&mut x, 4, 4, &angles, RopeStyle::Adjacent);
        assert!(((x[0] * x[0] + x[1] * x[1]) - 5.0).abs() < 1e-5);
        assert!(((x[2] * x[2] + x[3] * x[3]) - 25.0).abs() < 1e-4);
    }

    #[test]
    fn gates() {
        let mut g = vec![0.0, 20.0];
        swiglu(&mut g, &[1.0, 2.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 40.0).abs() < 1e-3);
        let mut g = vec![-20.0, 20.0, 1.0];
        geglu(&mut g, &[1.0, 1.0, 1.0]);
        assert_eq!(&g[..2], &[0.0, 20.0]);
        assert!((g[2] - 0.8413).abs() < 1e-3);
    }

    #[test]
    fn geglu_table_is_the_formula_on_f16_inputs() {
        // Inputs across (-10, 10), most of them between f16 values: the table must give what
        // rounding to f16, the tanh formula and rounding back give.
        let x: Vec<f32> = (0..199_990)
            .map(|i| -9.9999 + i as f32 * 1e-4 + 3e-5)
            .collect();
        let mut g = x.clone();
        geglu(&mut g, &vec![1.0; x.len()]);
        for (&x, &got) in x.iter().zip(&g) {
            let want = f16::from_f32(gelu_tanh(f16::from_f32(x).to_f32())).to_f32();
            assert_eq!(got.to_bits(), want.to_bits(), "gelu({x})");
        }
    }
}
