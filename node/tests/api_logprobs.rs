//! Log-probabilities in OpenAI's shapes over a real two-stage pipeline: chat's
//! `logprobs` + `top_logprobs` and the completions endpoint's `logprobs`, whole and streamed
//! (the same figures both ways), greedy picks being the most likely token, bad settings
//! refused; and the model's id (the file stem, or `--model-id`) in `/v1/models` and answers.

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shoal::api::ApiOptions;

async fn post(base: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    (status, resp.json().await.expect("JSON body"))
}

/// The JSON chunks of a streamed answer.
async fn stream(base: &str, path: &str, body: &Value) -> Vec<Value> {
    let text = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    text.split_terminator("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect()
}

fn as_f64(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_in_openais_shapes_whole_and_streamed() {
    let server = Server::pipeline().await;
    let base = server.base.as_str();
    let chat = json!({
        "messages": [{"role": "user", "content": "Name three colors."}],
        "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3,
    });
    let (status, body) = post(base, "/v1/chat/completions", &chat).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["model"], "SmolLM2-135M-Instruct.Q4_1",
        "the file's stem"
    );
    let choice = &body["choices"][0];
    let content = choice["logprobs"]["content"].as_array().expect("content");
    assert_eq!(choice["finish_reason"], "length", "{body}");
    assert_eq!(content.len(), 8, "one entry per token");
    let mut bytes = Vec::new();
    for entry in content {
        let lp = as_f64(&entry["logprob"]);
        assert!(lp <= 0.0, "{entry}");
        let top = entry["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3, "{entry}");
        // Greedy: the token picked is the most likely one, with the same figure.
        assert_eq!(top[0]["token"], entry["token"], "{entry}");
        assert_eq!(as_f64(&top[0]["logprob"]), lp);
        assert!(
            as_f64(&top[1]["logprob"]) <= lp
                && as_f64(&top[2]["logprob"]) <= as_f64(&top[1]["logprob"])
        );
        bytes.extend(
            entry["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        choice["message"]["content"].as_str().unwrap(),
        "the tokens' bytes spell the answer"
    );

    // Streamed: the same entries, spread over the chunks.
    let mut streamed = Vec::new();
    let mut streaming = chat.clone();
    streaming["stream"] = json!(true);
    for chunk in stream(base, "/v1/chat/completions", &streaming).await {
        if let Some(c) = chunk["choices"][0]["logprobs"]["content"].as_array() {
            streamed.extend(c.iter().cloned());
        }
    }
    assert_eq!(
        &streamed, content,
        "streamed logprobs equal the whole answer's"
    );

    // Without asking: null, as OpenAI answers.
    let plain = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let (_, body) = post(base, "/v1/chat/completions", &plain).await;
    assert!(body["choices"][0]["logprobs"].is_null(), "{body}");

    // The completions endpoint's column form.
    let completion =
        json!({"prompt": "1, 2, 3, 4,", "max_tokens": 6, "temperature": 0, "logprobs": 2});
    let (status, body) = post(base, "/v1/completions", &completion).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lp = &body["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 6);
    assert_eq!(
        tokens.concat(),
        body["choices"][0]["text"].as_str().unwrap()
    );
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 6);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert_eq!(offsets[1], tokens[0].len() as u64);
    for (top, picked) in lp["top_logprobs"].as_array().unwrap().iter().zip(&tokens) {
        let top = top.as_object().expect("a map of token to logprob");
        assert_eq!(top.len(), 2, "{top:?}");
        assert!(
            top.contains_key(*picked),
            "greedy pick {picked:?} among {top:?}"
        );
    }
    let mut streamed_tokens = Vec::new();
    for chunk in stream(base, "/v1/completions", &json!({"stream": true, "prompt": "1, 2, 3, 4,", "max_tokens": 6, "temperature": 0, "logprobs": 2})).await {
        if let Some(t) = chunk["choices"][0]["logprobs"]["tokens"].as_array() {
            streamed_tokens.extend(t.iter().map(|t| t.as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(streamed_tokens, tokens);

    // Settings OpenAI refuses are refused.
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hi", "logprobs": 6}),
            "logprobs",
        ),
    ] {
        let (status, answer) = post(base, path, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_id_names_the_model_everywhere() {
    let server = Server::pipeline_with(ApiOptions {
        model_id: Some("smollm2-q4".into()),
        ..ApiOptions::default()
    })
    .await;
    let base = server.base.as_str();
    let models: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smollm2-q4");
    let (_, body) = post(
        base,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 1}),
    )
    .await;
    assert_eq!(body["model"], "smollm2-q4");
    server.stop().await;
}
