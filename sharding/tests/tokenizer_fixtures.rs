//! The tokenizer against llama.cpp's recorded results for the three real models.

mod common;

use common::{cases, tokenizer};

const MODELS: [&str; 3] = ["smollm2", "qwen2.5-coder", "gemma3"];

#[test]
fn prompts_encode_to_llama_cpp_ids() {
    for model in MODELS {
        let tok = tokenizer(model);
        for case in cases(model) {
            assert_eq!(
                tok.encode(&case.prompt, true, true),
                case.prompt_ids,
                "{model} {}: {:?}",
                case.name,
                case.prompt
            );
        }
    }
}

#[test]
fn streaming_decode_reproduces_greedy_text_and_pieces() {
    for model in MODELS {
        let tok = tokenizer(model);
        for case in cases(model) {
            let mut decoder = tok.decoder();
            let mut text = String::new();
            for (i, &id) in case.greedy_ids.iter().enumerate() {
                let emitted = decoder.push(id).to_owned();
                // A piece that is complete UTF-8 on its own comes out unchanged.
                if let Ok(piece) = std::str::from_utf8(tok.piece(id)) {
                    assert_eq!(
                        piece, case.greedy_pieces[i],
                        "{model} {} piece {i}",
                        case.name
                    );
                    if decoder.pending().is_empty() && !piece.is_empty() {
                        assert!(emitted.ends_with(piece), "{model} {} piece {i}", case.name);
                    }
                }
                text.push_str(&emitted);
            }
            text.push_str(&decoder.finish());
            assert_eq!(text, case.greedy_text, "{model} {}", case.name);
            assert_eq!(
                tok.decode(&case.greedy_ids),
                case.greedy_text,
                "{model} {}",
                case.name
            );
        }
    }
}
