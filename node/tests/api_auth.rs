//! The API's guards over a real two-stage pipeline: a bearer token on /v1/* and /metrics
//! (not /health), a bound on generation requests in flight answered with 429 at once, and a
//! body size limit answered with 413; `shoal status` sends the token.

mod common;

use std::time::{Duration, Instant};

use common::{metric, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shoal::api::{ApiOptions, ApiToken};
use shoal_tests::references;

const TOKEN: &str = "a-test-token-of-enough-length";

async fn call(
    base: &str,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (StatusCode, String, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut req = match body {
        Some(body) => client.post(format!("{base}{path}")).json(body),
        None => client.get(format!("{base}{path}")),
    };
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("request");
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, resp.text().await.expect("body"), headers)
}

fn error_code(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).expect("JSON error body");
    v["error"]["code"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_api_but_not_health() {
    assert!(ApiToken::new("short").is_err(), "short tokens are refused");
    let server = Server::pipeline_with(ApiOptions {
        token: Some(ApiToken::new(TOKEN).unwrap()),
        ..ApiOptions::default()
    })
    .await;
    let base = server.base.as_str();
    let r = references("smollm2")
        .into_iter()
        .find(|r| r.key == "p1")
        .unwrap();
    let req = json!({"prompt": r.prompt, "max_tokens": r.greedy_ids.len(), "temperature": 0});

    let (status, body, headers) = call(base, "/v1/completions", Some(&req), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "invalid_api_key");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, body, _) = call(
        base,
        "/v1/completions",
        Some(&req),
        Some("wrong-token-of-enough-length"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    for path in ["/v1/models", "/v1/cluster", "/metrics"] {
        let (status, _, _) = call(base, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _, _) = call(base, path, None, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _, _) = call(base, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body, _) = call(base, "/v1/completions", Some(&req), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["text"], r.greedy_text);

    // `shoal status` with and without the token.
    let status_cmd = |token: Option<&'static str>| {
        let base = server.base.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
            cmd.args(["status", "--json", "--node", &base])
                .env_remove("SHOAL_API_TOKEN_FILE")
                .env_remove("SHOAL_API_TOKEN");
            if let Some(token) = token {
                cmd.env("SHOAL_API_TOKEN", token);
            }
            cmd.output().unwrap()
        })
    };
    let out = status_cmd(None).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "refused without the token");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = status_cmd(Some(TOKEN)).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_queue_is_shed_with_429_while_admitted_requests_finish_intact() {
    let server = Server::pipeline_with(ApiOptions {
        max_requests: 2,
        max_queue: 3,
        max_body_bytes: 4096,
        ..ApiOptions::default()
    })
    .await;
    let base = server.base.clone();
    let r = references("smollm2")
        .into_iter()
        .find(|r| r.key == "p1")
        .unwrap();
    let req = json!({"prompt": r.prompt, "max_tokens": r.greedy_ids.len(), "temperature": 0, "stream": true});

    let flood: Vec<_> = (0..10)
        .map(|_| {
            let (base, req) = (base.clone(), req.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, body, headers) =
                    call(&base, "/v1/completions", Some(&req), None).await;
                (status, body, headers, started.elapsed())
            })
        })
        .collect();
    // /v1/cluster shows the slots taken and the requests waiting.
    let admission = |base: String| async move {
        let (_, body, _) = call(&base, "/v1/cluster", None, None).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        v["admission"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = admission(base.clone()).await;
        if a["running"] == 2 && a["waiting"].as_u64().unwrap() >= 1 {
            assert_eq!(
                (&a["max_requests"], &a["max_queue"]),
                (&json!(2), &json!(3))
            );
            break;
        }
        assert!(Instant::now() < deadline, "never saw the queue in use: {a}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut served, mut shed) = (0, 0);
    for task in flood {
        let (status, body, headers, took) = task.await.unwrap();
        match status {
            StatusCode::OK => {
                served += 1;
                let text: String = body
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter(|d| *d != "[DONE]")
                    .map(|d| {
                        let v: Value = serde_json::from_str(d).unwrap();
                        v["choices"][0]["text"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect();
                assert_eq!(text, r.greedy_text, "an admitted request changed");
            }
            StatusCode::TOO_MANY_REQUESTS => {
                shed += 1;
                assert_eq!(error_code(&body), "rate_limit_exceeded");
                assert_eq!(headers["retry-after"], "1");
                assert!(took < Duration::from_secs(2), "shed slowly: {took:?}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    println!("flood of 10 with 2 slots and 3 places in the queue: {served} served, {shed} shed");
    assert!(served >= 5 && shed >= 1, "{served} served, {shed} shed");
    assert_eq!(served + shed, 10);

    let a = admission(base.clone()).await;
    assert_eq!(
        (&a["running"], &a["waiting"]),
        (&json!(0), &json!(0)),
        "{a}"
    );
    // The slots came back: a request after the flood is served.
    let plain = json!({"prompt": r.prompt, "max_tokens": 4, "temperature": 0});
    let (status, body, _) = call(&base, "/v1/completions", Some(&plain), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A body over the limit is 413 in OpenAI's error shape.
    let big = json!({"prompt": "x".repeat(8192), "max_tokens": 1});
    let (status, body, _) = call(&base, "/v1/completions", Some(&big), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let metrics = server.metrics.encode();
    assert!(
        metrics.contains(r#"status="429""#),
        "shed requests are counted"
    );
    server.stop().await;
}

/// 32 requests at once against a stage that holds 12 sessions per head: with 32 slots at
/// the API, 20 are refused by the stage as busy and wait for room; with the default slots,
/// 20 wait in the API's queue. Either way every request completes with the greedy text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_request_completes_when_more_arrive_than_the_stages_hold() {
    let r = references("smollm2")
        .into_iter()
        .find(|r| r.key == "p1")
        .unwrap();
    let req = json!({"prompt": r.prompt, "max_tokens": r.greedy_ids.len(), "temperature": 0});
    for max_requests in [32, ApiOptions::default().max_requests] {
        let server = Server::pipeline_with(ApiOptions {
            max_requests,
            ..ApiOptions::default()
        })
        .await;
        let calls: Vec<_> = (0..32)
            .map(|_| {
                let (base, req) = (server.base.clone(), req.clone());
                tokio::spawn(async move { call(&base, "/v1/completions", Some(&req), None).await })
            })
            .collect();
        for task in calls {
            let (status, body, _) = task.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{max_requests} slots: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["choices"][0]["text"], r.greedy_text.as_str());
        }
        let metrics = server.metrics.encode();
        if max_requests < 32 {
            assert!(
                metric(&metrics, "shoal_queue_wait_seconds_count") >= 20.0,
                "{metrics}"
            );
        }
        assert_eq!(metric(&metrics, "shoal_queue_waiting_requests"), 0.0);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_are_refused_with_a_retry_time() {
    let server = Server::pipeline_with(ApiOptions {
        max_request_rate: Some(0.2),
        ..ApiOptions::default()
    })
    .await;
    let base = server.base.clone();
    let req = json!({"prompt": "Hello", "max_tokens": 1, "temperature": 0});
    let (status, body, _) = call(&base, "/v1/completions", Some(&req), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // One request per 5 s: the next one right away is refused, and told when to come back.
    let (status, body, headers) = call(&base, "/v1/completions", Some(&req), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "rate_limit_exceeded");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    // Reading the cluster is not a generation request: never rate-bound.
    let (status, _, _) = call(&base, "/v1/models", None, None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
