//! llama-perplexity's printed layout, line for line, so scripts reading one tool's output
//! read the other's.

use std::fmt::Write;

use super::stats::{median, percentile, KlDivergence, Nll};

/// The running perplexity after chunk `chunk`, as llama-perplexity prints it (`[3]12.3456,`).
pub fn ppl_progress(chunk: usize, nll: &Nll) -> String {
    format!("[{chunk}]{:.4},", nll.ppl())
}

/// The closing line of a perplexity run.
pub fn ppl_final(nll: &Nll) -> String {
    let (ppl, unc) = nll.estimate();
    format!("Final estimate: PPL = {ppl:.4} +/- {unc:.5}")
}

/// The heading of the per-chunk table of a KL-divergence run.
pub fn kld_table_heading() -> &'static str {
    "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p"
}

/// One row of the per-chunk table.
pub fn kld_table_row(chunk: usize, kl: &KlDivergence) -> String {
    let (ppl, ppl_unc) = kl.ppl();
    let (ratio, ratio_unc) = kl.log_ppl_ratio();
    let (kld, kld_unc) = kl.mean_kld();
    let (rms, rms_unc) = kl.rms_p_diff();
    let (top, top_unc) = kl.same_top();
    format!(
        "{chunk:4}    {ppl:9.4} ± {ppl_unc:9.4}    {ratio:10.5} ± {ratio_unc:10.5}    {kld:10.5} ± {kld_unc:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
        100.0 * rms,
        100.0 * rms_unc,
        100.0 * top,
        100.0 * top_unc
    )
}

/// The closing statistics of a KL-divergence run (empty below 100 rows, as llama.cpp).
pub fn kld_summary(kl: &KlDivergence) -> String {
    let mut s = String::new();
    if kl.count() < 100 {
        return s;
    }
    let mut kld = kl.kld.clone();
    let mut dp = kl.p_diff.clone();
    kld.sort_by(f32::total_cmp);
    dp.sort_by(f32::total_cmp);
    let (ppl, ppl_unc) = kl.ppl();
    let (base, base_unc) = kl.ppl_base();
    let (ratio, ratio_unc) = kl.log_ppl_ratio();
    let cov = kl.log_ppl_cov();
    let q_unc = ppl_unc / ppl;
    let b_unc = base_unc / base;
    let _ = writeln!(s, "====== Perplexity statistics ======");
    let _ = writeln!(
        s,
        "Mean PPL(Q)                   : {ppl:10.6} ± {ppl_unc:10.6}"
    );
    let _ = writeln!(
        s,
        "Mean PPL(base)                : {base:10.6} ± {base_unc:10.6}"
    );
    let _ = writeln!(
        s,
        "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
        100.0 * cov / (q_unc * b_unc)
    );
    let _ = writeln!(
        s,
        "Mean ln(PPL(Q)/PPL(base))     : {ratio:10.6} ± {ratio_unc:10.6}"
    );
    let r = ratio.exp();
    let _ = writeln!(
        s,
        "Mean PPL(Q)/PPL(base)         : {r:10.6} ± {:10.6}",
        r * ratio_unc
    );
    let diff_unc = (ppl_unc * ppl_unc + base_unc * base_unc - 2.0 * ppl * base * cov).sqrt();
    let _ = writeln!(
        s,
        "Mean PPL(Q)-PPL(base)         : {:10.6} ± {diff_unc:10.6}",
        ppl - base
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "====== KL divergence statistics ======");
    let (mean, mean_unc) = kl.mean_kld();
    let _ = writeln!(s, "Mean    KLD: {mean:10.6} ± {mean_unc:10.6}");
    let _ = writeln!(s, "Maximum KLD: {:10.6}", kld[kld.len() - 1]);
    for (label, f) in [
        ("99.9%  ", 0.999),
        ("99.0%  ", 0.99),
        ("95.0%  ", 0.95),
        ("90.0%  ", 0.9),
    ] {
        let _ = writeln!(s, "{label} KLD: {:10.6}", percentile(&kld, f));
    }
    let _ = writeln!(s, "Median  KLD: {:10.6}", median(&kld));
    for (label, f) in [
        ("10.0%  ", 0.1),
        (" 5.0%  ", 0.05),
        (" 1.0%  ", 0.01),
        (" 0.1%  ", 0.001),
    ] {
        let _ = writeln!(s, "{label} KLD: {:10.6}", percentile(&kld, f));
    }
    let _ = writeln!(s, "Minimum KLD: {:10.6}", kld[0]);
    let _ = writeln!(s);
    let _ = writeln!(s, "====== Token probability statistics ======");
    let (m, mu) = super::stats::mean_and_uncertainty(kl.sum_p_diff, kl.sum_p_diff2, kl.count());
    let _ = writeln!(s, "Mean    Δp: {:6.3} ± {:5.3} %", 100.0 * m, 100.0 * mu);
    let _ = writeln!(s, "Maximum Δp: {:6.3}%", 100.0 * dp[dp.len() - 1]);
    for (label, f) in [
        ("99.9%  ", 0.999),
        ("99.0%  ", 0.99),
        ("95.0%  ", 0.95),
        ("90.0%  ", 0.9),
        ("75.0%  ", 0.75),
    ] {
        let _ = writeln!(s, "{label} Δp: {:6.3}%", 100.0 * percentile(&dp, f));
    }
    let _ = writeln!(s, "Median  Δp: {:6.3}%", 100.0 * median(&dp));
    for (label, f) in [
        ("25.0%  ", 0.25),
        ("10.0%  ", 0.1),
        (" 5.0%  ", 0.05),
        (" 1.0%  ", 0.01),
        (" 0.1%  ", 0.001),
    ] {
        let _ = writeln!(s, "{label} Δp: {:6.3}%", 100.0 * percentile(&dp, f));
    }
    let _ = writeln!(s, "Minimum Δp: {:6.3}%", 100.0 * dp[0]);
    let (rms, rms_unc) = kl.rms_p_diff();
    let _ = writeln!(
        s,
        "RMS Δp    : {:6.3} ± {:5.3} %",
        100.0 * rms,
        100.0 * rms_unc
    );
    let (top, top_unc) = kl.same_top();
    let _ = writeln!(
        s,
        "Same top p: {:6.3} ± {:5.3} %",
        100.0 * top,
        100.0 * top_unc
    );
    s
}
