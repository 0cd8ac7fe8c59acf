//! Chat templates of the real models.

mod common;

use sharding::chat::{ChatTemplate, Message};
use sharding::gguf::GgufFile;

fn template(model: &str) -> Option<ChatTemplate> {
    let file = GgufFile::open(common::model_path(model)).expect("open model");
    ChatTemplate::from_gguf(file.metadata()).expect("template compiles")
}

#[test]
fn smollm2_renders_the_fixture_prompt() {
    let fixture = common::fixture("smollm2_greedy.json");
    let case = &fixture["prompts"]["p1_chat"];
    let user = case["raw_user_message"].as_str().unwrap();
    let t = template("smollm2").expect("SmolLM2 has a template");
    let prompt = t.render(&[Message::new("user", user)], true).unwrap();
    assert_eq!(prompt, case["prompt"].as_str().unwrap());
    // And the rendered prompt tokenizes to the recorded ids.
    let ids: Vec<u32> = case["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        common::tokenizer("smollm2").encode(&prompt, true, true),
        ids
    );
}

#[test]
fn smollm2_keeps_a_given_system_message_and_omits_the_generation_prompt() {
    let t = template("smollm2").unwrap();
    let prompt = t
        .render(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn qwen_renders_chatml_with_its_default_system_prompt() {
    let t = template("qwen2.5-coder").expect("Qwen has a template");
    let prompt = t
        .render(
            &[
                Message::new("user", "Write hello world."),
                Message::new("assistant", "print('hello world')"),
                Message::new("user", "In C?"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWrite hello world.<|im_end|>\n\
         <|im_start|>assistant\nprint('hello world')<|im_end|>\n\
         <|im_start|>user\nIn C?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn gemma_base_model_has_no_template() {
    assert!(template("gemma3").is_none());
}
