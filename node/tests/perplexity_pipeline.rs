//! The cluster measured as a model: a chunk evaluated through a real two-stage pipeline
//! (`shoal::eval::PipelineSource`) gives exactly the one-node logits with f32 on the wire,
//! and a small but non-zero KL divergence with q8.

mod common;

use std::sync::Arc;

use common::start_pipeline;
use sharding::eval::logits_file::{encode_row, row_words};
use sharding::eval::stats::KlDivergence;
use sharding::eval::{LocalSource, LogitSource};
use sharding::gguf::GgufFile;
use sharding::tokenizer::Tokenizer;
use shoal::eval::PipelineSource;
use shoal::metrics::Metrics;
use shoal::pipeline::WireDtype;
use shoal_tests::model_path;

const CTX: usize = 160;

/// A chunk of real text, tokenized as `shoal perplexity` does.
fn chunk(file: &GgufFile) -> Vec<u32> {
    let text = std::fs::read_to_string(shoal_tests::workspace().join("ARCHITECTURE.md")).unwrap();
    let tokens =
        sharding::eval::tokenize_text(&Tokenizer::from_gguf(file.metadata()).unwrap(), &text);
    assert!(tokens.len() >= CTX);
    tokens[..CTX].to_vec()
}

/// The logits of the scored rows through a pipeline whose senders use `wire`.
async fn through_pipeline(wire: WireDtype, tokens: Vec<u32>, n_vocab: usize) -> Vec<f32> {
    let (head, stages, _) = start_pipeline(Arc::new(Metrics::new()), wire).await;
    let runtime = tokio::runtime::Handle::current();
    let mut source = PipelineSource::new(head.clone(), runtime, n_vocab);
    let logits = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        source
            .logits(&tokens, CTX / 2..CTX - 1, &mut out)
            .map(|()| out)
    })
    .await
    .unwrap()
    .expect("pipeline logits");
    head.shutdown().await;
    for s in stages {
        s.shutdown().await;
    }
    logits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_scores_a_chunk_as_one_node_does() {
    let file = GgufFile::open(model_path("smollm2")).unwrap();
    let tokens = chunk(&file);
    let mut local = LocalSource::load(&file, 1, CTX, CTX).unwrap();
    let n_vocab = local.n_vocab();
    let mut one_node = Vec::new();
    local
        .logits(&tokens, CTX / 2..CTX - 1, &mut one_node)
        .unwrap();
    assert_eq!(one_node.len(), (CTX - 1 - CTX / 2) * n_vocab);

    let f32_wire = through_pipeline(WireDtype::F32, tokens.clone(), n_vocab).await;
    assert!(
        f32_wire
            .iter()
            .zip(&one_node)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "f32 on the wire: the same bits as one node"
    );

    let q8_wire = through_pipeline(WireDtype::Q8, tokens.clone(), n_vocab).await;
    let mut kl = KlDivergence::default();
    let mut base = vec![0u16; row_words(n_vocab)];
    for (i, (q, b)) in q8_wire
        .chunks_exact(n_vocab)
        .zip(one_node.chunks_exact(n_vocab))
        .enumerate()
    {
        let target = tokens[CTX / 2 + 1 + i] as usize;
        encode_row(b, target, &mut base);
        kl.add_row(q, &base, target);
    }
    let (mean, _) = kl.mean_kld();
    assert!(
        mean > 1e-5 && mean < 0.05,
        "q8 on the wire: mean KLD {mean}"
    );
    assert!(kl.same_top().0 > 0.85, "q8: same top {}", kl.same_top().0);
}
