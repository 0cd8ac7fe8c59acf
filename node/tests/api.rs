//! The OpenAI-compatible API over a real two-stage pipeline: greedy answers equal llama.cpp's
//! reference continuations, streamed text equals the whole answer, stop sequences cut as
//! OpenAI does, usage counts, errors come back as OpenAI error JSON, a disconnected stream
//! stops its generation, and the per-stage and per-hop metrics move.

mod common;

use std::time::{Duration, Instant};

use common::{metric, Server, CONTEXT};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shoal_tests::references;

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

async fn get(base: &str, path: &str) -> (StatusCode, String) {
    let resp = reqwest::get(format!("{base}{path}"))
        .await
        .expect("request");
    (resp.status(), resp.text().await.expect("body"))
}

/// The `data:` payloads of an SSE response, `[DONE]` included, checking the framing.
async fn events(base: &str, path: &str, body: &Value) -> Vec<String> {
    let mut resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut raw = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        raw.extend_from_slice(&chunk);
    }
    let raw = String::from_utf8(raw).expect("UTF-8 stream");
    assert!(
        raw.ends_with("data: [DONE]\n\n"),
        "stream ends with [DONE]: {raw:?}"
    );
    raw.split_terminator("\n\n")
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event {e:?}"))
                .to_owned()
        })
        .collect()
}

fn chunks(events: &[String]) -> Vec<Value> {
    let (done, json) = events.split_last().expect("events");
    assert_eq!(done, "[DONE]");
    json.iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect()
}

fn assert_openai_error(status: StatusCode, body: &Value, want: StatusCode, kind: &str) {
    assert_eq!(status, want, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_api_over_a_two_stage_pipeline() {
    let server = Server::pipeline().await;
    let base = server.base.as_str();
    let refs = references("smollm2");
    let name = common::model_info().name;
    let by_key = |k: &str| refs.iter().find(|r| r.key == k).expect("reference").clone();

    // Greedy completions equal llama.cpp's continuations, with exact usage.
    let metrics_before = server.metrics.encode();
    for key in ["p1", "p5"] {
        let r = by_key(key);
        let n = r.greedy_ids.len();
        let req =
            json!({"model": "anything", "prompt": r.prompt, "max_tokens": n, "temperature": 0});
        let (status, body) = post(base, "/v1/completions", &req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["object"], "text_completion");
        assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(body["model"], name.as_str(), "our model's name");
        assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(body["choices"][0]["text"], r.greedy_text, "{key}");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        let usage = &body["usage"];
        assert_eq!(usage["prompt_tokens"], r.prompt_ids.len());
        assert_eq!(usage["completion_tokens"], n);
        assert_eq!(usage["total_tokens"], r.prompt_ids.len() + n);
    }

    // The per-stage and per-hop series moved.
    let metrics_after = server.metrics.encode();
    for stage in 0..2 {
        for kind in ["prefill", "decode"] {
            let series =
                format!(r#"shoal_stage_step_seconds_count{{stage="{stage}",kind="{kind}"}}"#);
            let (a, b) = (
                metric(&metrics_before, &series),
                metric(&metrics_after, &series),
            );
            assert!(b > a, "{series}: {a} -> {b}\n{metrics_after}");
        }
    }
    for hop in 0..server.hops.len() {
        let series = format!(r#"shoal_hop_sent_bytes_total{{hop="{hop}"}}"#);
        let (a, b) = (
            metric(&metrics_before, &series),
            metric(&metrics_after, &series),
        );
        // At least the two prompts' hidden states (f32, 576 wide) crossed every hop.
        assert!(b - a >= (5.0 + 14.0) * 576.0 * 4.0, "{series}: {a} -> {b}");
        let series = format!(r#"shoal_hop_send_seconds_count{{hop="{hop}"}}"#);
        assert!(metric(&metrics_after, &series) > metric(&metrics_before, &series));
    }
    let served = r#"shoal_http_requests_total{endpoint="/v1/completions",status="200"}"#;
    assert!(metric(&metrics_after, served) >= 2.0);
    assert!(metric(&metrics_after, "shoal_generated_tokens_total") >= 80.0);
    assert!(metric(&metrics_after, "shoal_time_to_first_token_seconds_count") >= 2.0);
    // ... and /metrics serves them as Prometheus text.
    let (status, text) = get(base, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("shoal_stage_step_seconds_bucket{"), "{text}");
    assert!(text.ends_with("# EOF\n"));

    // The chat endpoint renders the model's template: the reference chat continuation.
    let chat = by_key("p1_chat");
    let req = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "The capital of France is"}],
        "max_completion_tokens": chat.greedy_ids.len(),
        "temperature": 0,
        "seed": 7,
    });
    let (status, body) = post(base, "/v1/chat/completions", &req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], chat.greedy_text);
    assert_eq!(body["usage"]["prompt_tokens"], chat.prompt_ids.len());
    let whole_chat = body["choices"][0]["message"]["content"].clone();

    // Streamed chat: role first, the same text, finish reason, usage, [DONE].
    let mut stream_req = req.clone();
    stream_req["stream"] = json!(true);
    stream_req["stream_options"] = json!({"include_usage": true});
    let got = chunks(&events(base, "/v1/chat/completions", &stream_req).await);
    assert!(got.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert!(got.iter().all(|c| c["id"] == got[0]["id"]));
    assert_eq!(got[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = got
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole_chat.as_str().unwrap());
    let (usage, finish) = (&got[got.len() - 1], &got[got.len() - 2]);
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], chat.greedy_ids.len());

    // Streamed completion concatenates to the whole one; no usage unless asked.
    let p7 = by_key("p7");
    let req = json!({"prompt": [p7.prompt], "max_tokens": 24, "temperature": 0});
    let (_, whole) = post(base, "/v1/completions", &req).await;
    let mut stream_req = req.clone();
    stream_req["stream"] = json!(true);
    let got = chunks(&events(base, "/v1/completions", &stream_req).await);
    assert!(got.iter().all(|c| c["object"] == "text_completion"));
    assert!(got.iter().all(|c| c.get("usage").is_none()));
    let text: String = got
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert!(p7.greedy_text.starts_with(&text), "{text:?}");
    assert_eq!(got.last().unwrap()["choices"][0]["finish_reason"], "length");

    // Stop sequences: cut before the first one (even one spanning tokens), finish "stop".
    let p1 = by_key("p1");
    for (stop, want) in [
        (json!("United"), " Paris.\n\nThe "),
        (json!(["\n\nThe", "zzz"]), " Paris."),
        (
            json!("approximately 311"),
            " Paris.\n\nThe United States has a population of ",
        ),
    ] {
        let req = json!({"prompt": p1.prompt, "max_tokens": 40, "temperature": 0, "stop": stop});
        let (status, body) = post(base, "/v1/completions", &req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["choices"][0]["text"], want, "stop {stop}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert!(body["usage"]["completion_tokens"].as_u64().unwrap() < 40);
        let mut stream_req = req.clone();
        stream_req["stream"] = json!(true);
        let got = chunks(&events(base, "/v1/completions", &stream_req).await);
        let text: String = got
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, want, "streamed, stop {stop}");
        assert_eq!(got.last().unwrap()["choices"][0]["finish_reason"], "stop");
    }

    // Sampling with a seed is reproducible.
    let req = json!({"prompt": p1.prompt, "max_tokens": 12, "temperature": 0.9, "top_p": 0.9, "seed": 1234});
    let (_, a) = post(base, "/v1/completions", &req).await;
    let (_, b) = post(base, "/v1/completions", &req).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);

    // Errors in OpenAI's format.
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.expect("error JSON");
    assert_openai_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    let (status, body) = post(base, "/v1/completions", &json!({"max_tokens": 3})).await;
    assert_openai_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    let (status, body) = post(base, "/v1/chat/completions", &json!({"messages": "hi"})).await;
    assert_openai_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    let req = json!({"prompt": "Hello", "max_tokens": CONTEXT});
    let (status, body) = post(base, "/v1/completions", &req).await;
    assert_openai_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("512"),
        "{body}"
    );
    let long = "word ".repeat(CONTEXT + 10);
    let req = json!({"messages": [{"role": "user", "content": long}]});
    let (status, body) = post(base, "/v1/chat/completions", &req).await;
    assert_openai_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    let req = json!({"prompt": "Hello", "temperature": 5});
    let (status, body) = post(base, "/v1/completions", &req).await;
    assert_openai_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    assert_eq!(body["error"]["param"], "temperature");
    let (status, _) = get(base, "/v1/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The read-only endpoints.
    let (status, body) = get(base, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], name.as_str());
    assert_eq!(models["data"][0]["object"], "model");
    let (status, body) = get(base, "/health").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );
    let (status, body) = get(base, "/v1/cluster").await;
    assert_eq!(status, StatusCode::OK);
    let view: shoal::cluster::ClusterView = serde_json::from_str(&body).expect("cluster view");
    assert_eq!(view.state, shoal::cluster::ClusterState::Ready);

    // A client that drops a stream stops its generation.
    let generated = |text: &str| metric(text, "shoal_generated_tokens_total");
    let before = generated(&server.metrics.encode());
    let req = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0.8,
                     "seed": 3, "stream": true});
    let mut resp = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    let mut seen = 0;
    while seen < 3 {
        let chunk = resp.chunk().await.unwrap().expect("stream goes on");
        seen += chunk.windows(6).filter(|w| w == b"data: ").count();
    }
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.metrics.encode();
        if metric(&text, "shoal_sessions_in_flight") == 0.0 {
            let spent = generated(&text) - before;
            assert!(
                spent < 200.0,
                "generation went on after the disconnect: {spent} tokens"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the session never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_head_requests_get_503_and_health_says_why() {
    let server = Server::headless().await;
    let base = server.base.as_str();
    let req = json!({"prompt": "Hello", "max_tokens": 4});
    let (status, body) = post(base, "/v1/completions", &req).await;
    assert_openai_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("forming"));
    let req = json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let (status, body) = post(base, "/v1/chat/completions", &req).await;
    assert_openai_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
    );
    let (status, body) = get(base, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "forming");
    assert_eq!(health["problem"], "waiting for members");
    let (_, text) = get(base, "/metrics").await;
    let series = r#"shoal_http_requests_total{endpoint="/v1/completions",status="503"}"#;
    assert_eq!(metric(&text, series), 1.0, "{text}");
    server.stop().await;
}
