//! The transcendental functions every model op uses, computed the same way on every machine.
//!
//! `f32::exp`, `sin`, `cos`, `powf`, `tanh` and `ln` call the platform's libm, and glibc on
//! x86 and musl on aarch64 round differently in the last bit for a share of inputs (for
//! `expf`, about one input in 120). A last-bit difference in a softmax weight or a rotary
//! angle is enough to make two machines pick different tokens, so the model code calls
//! these instead:
//!
//! - [`expf`] is glibc's `expf` algorithm (a 32-entry table of 2^(i/32) and a cubic in
//!   double precision, with glibc's x86 fused multiply-adds) written out in Rust: it gives
//!   glibc's bits for every one of the 2^32 inputs (checked exhaustively against glibc 2.36;
//!   `exp_matches_the_host_libm` samples it in `cargo test`), so x86 tokens still equal
//!   llama.cpp's.
//! - The others evaluate the pure-Rust `libm` crate in double precision and round once to
//!   f32: within half an f32 ulp plus 2^-29 of one, and bit-identical everywhere because
//!   Rust never contracts or reorders float operations. They differ from glibc's float
//!   functions in the last bit for ~0.2 % of `sinf`/`cosf` inputs; none of the 65536 f16
//!   inputs of the GeLU table and none of the rotary scales of the supported models change.
//!
//! `f32::mul_add` and `sqrt` are IEEE-exact everywhere and need no twin here.

/// 2^(i/32) as an f64 bit pattern with `i << 47` taken off, so that adding `k << 47` for
/// `k ≡ i (mod 32)` scales it by 2^(k/32) (glibc's `__exp2f_data.tab`).
const EXP2_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `e^x`, bit-identical to glibc's `expf` on x86-64 (see the module docs).
#[inline]
pub fn expf(x: f32) -> f32 {
    // 32 / ln 2, the rounding shift 1.5 * 2^52, and the cubic's coefficients scaled by 1/32.
    let inv_ln2_n = f64::from_bits(0x40471547652b82fe);
    let shift = f64::from_bits(0x4338000000000000);
    let c0 = f64::from_bits(0x3ebc6af84b912394);
    let c1 = f64::from_bits(0x3f2ebfce50fac4f3);
    let c2 = f64::from_bits(0x3f962e42ff0c52d6);
    let abstop = (x.to_bits() >> 20) & 0x7ff;
    if abstop >= 88.0f32.to_bits() >> 20 {
        // |x| >= 88, or NaN.
        if x == f32::NEG_INFINITY {
            return 0.0;
        }
        if abstop >= f32::INFINITY.to_bits() >> 20 {
            return x + x;
        }
        if x > f32::from_bits(0x42b1_7217) {
            return f32::INFINITY;
        }
        if x < -f32::from_bits(0x42cf_f1b4) {
            return 0.0;
        }
    }
    let xd = f64::from(x);
    // x·32/ln2 = k + r with integer k (rounded by the shift) and |r| ≤ 1/2.
    let kd = inv_ln2_n.mul_add(xd, shift);
    let ki = kd.to_bits();
    let kd = kd - shift;
    let r = inv_ln2_n.mul_add(xd, -kd);
    let t = EXP2_TABLE[(ki % 32) as usize].wrapping_add(ki << 47);
    let s = f64::from_bits(t);
    let z = c0.mul_add(r, c1);
    let r2 = r * r;
    let y = c2.mul_add(r, 1.0);
    let y = z.mul_add(r2, y);
    (y * s) as f32
}

/// `sin(x)`, rounded once from double precision.
#[inline]
pub fn sinf(x: f32) -> f32 {
    libm::sin(f64::from(x)) as f32
}

/// `cos(x)`, rounded once from double precision.
#[inline]
pub fn cosf(x: f32) -> f32 {
    libm::cos(f64::from(x)) as f32
}

/// `x^y`, rounded once from double precision.
#[inline]
pub fn powf(x: f32, y: f32) -> f32 {
    libm::pow(f64::from(x), f64::from(y)) as f32
}

/// `tanh(x)`, rounded once from double precision.
#[inline]
pub fn tanhf(x: f32) -> f32 {
    libm::tanh(f64::from(x)) as f32
}

/// The natural logarithm, rounded once from double precision.
#[inline]
pub fn lnf(x: f32) -> f32 {
    libm::log(f64::from(x)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 97th bit pattern (all signs, exponents and NaNs are met): the exhaustive check
    /// over all 2^32 inputs takes minutes, this one a fraction of a second in release.
    #[test]
    fn exp_matches_the_host_libm() {
        // Only glibc's x86 `expf` is the reference; other hosts' libm round differently.
        if !cfg!(all(target_arch = "x86_64", target_env = "gnu")) {
            return;
        }
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(97 * 7919) {
            let x = f32::from_bits(bits);
            let (got, want) = (expf(x), x.exp());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "expf({x:e}) = {got:e}, glibc {want:e}"
            );
            bits = next;
        }
    }

    /// Values whose bits are fixed by this module on every machine: exact cases, the
    /// special inputs, and results recorded from glibc.
    #[test]
    fn exp_edges() {
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(-0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(f32::INFINITY), f32::INFINITY);
        assert!(expf(f32::NAN).is_nan());
        assert_eq!(expf(89.0), f32::INFINITY);
        assert_eq!(expf(-104.0), 0.0);
        assert_eq!(expf(1.0).to_bits(), 0x402d_f854);
        assert_eq!(expf(-1.0).to_bits(), 0x3ebc_5ab2);
        assert_eq!(expf(-103.5).to_bits(), 0x0000_0001);
    }

    #[test]
    fn others_are_close_to_the_true_values() {
        for &x in &[0.5f32, 1.0, 3.0, 100.0, 4096.5] {
            assert!((f64::from(sinf(x)) - f64::from(x).sin()).abs() < 1e-7);
            assert!((f64::from(cosf(x)) - f64::from(x).cos()).abs() < 1e-7);
        }
        assert_eq!(powf(2.0, 10.0), 1024.0);
        assert_eq!(tanhf(0.0), 0.0);
        assert_eq!(lnf(1.0), 0.0);
        assert!((tanhf(0.5) - 0.5f32.tanh()).abs() <= f32::EPSILON);
    }
}
