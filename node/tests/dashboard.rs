//! `GET /`: the dashboard page, shipped in the binary, behind the API token — which a
//! browser sends as a Basic password, for the page and the requests the page makes.

mod common;

use common::Server;
use reqwest::StatusCode;
use shoal::api::{ApiOptions, ApiToken};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_behind_the_token() {
    let token = "dashboard-test-token-0123";
    let server = Server::pipeline_with(ApiOptions {
        token: Some(ApiToken::new(token).unwrap()),
        ..ApiOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let page = format!("{}/", server.base);

    let refused = client.get(&page).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Basic "),
        "a browser is asked for a password: {challenge}"
    );

    let wrong = client
        .get(&page)
        .basic_auth("me", Some("not-the-token-at-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let ok = client
        .get(&page)
        .basic_auth("me", Some(token))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = ok.text().await.unwrap();
    assert!(
        html.contains("fetch(\"/v1/cluster\""),
        "the page polls the cluster view"
    );

    // The page's own requests carry the same Basic credentials.
    let view = client
        .get(format!("{}/v1/cluster", server.base))
        .basic_auth("me", Some(token))
        .send()
        .await
        .unwrap();
    assert_eq!(view.status(), StatusCode::OK);
    // API clients keep the bearer form, and its challenge.
    let bearer = client
        .get(format!("{}/v1/models", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.headers()["www-authenticate"], "Bearer");
    server.stop().await;
}
