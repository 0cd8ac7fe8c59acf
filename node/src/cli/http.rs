//! Reading a node's HTTP API: `GET /v1/cluster`, shared by `shoal status` and `shoal plan`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use shoal::cluster::ClusterView;

/// How long one fetch may take: a status command that hangs is worse than one that says
/// the node is unreachable.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `node` as a base URL: `http://` is added when no scheme is given, a trailing `/` dropped.
pub(crate) fn base_url(node: &str) -> String {
    let node = node.trim().trim_end_matches('/');
    if node.contains("://") {
        node.to_owned()
    } else {
        format!("http://{node}")
    }
}

/// The API token to use: the contents of `file` when given (an empty file is an error),
/// else the `SHOAL_API_TOKEN` environment variable, else none. Whitespace is trimmed.
pub(crate) fn api_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API token file {}", path.display()))?;
            // An empty file must not quietly leave the API open.
            let text = text.trim();
            anyhow::ensure!(
                !text.is_empty(),
                "the API token file {} is empty",
                path.display()
            );
            Ok(Some(text.to_owned()))
        }
        None => Ok(std::env::var("SHOAL_API_TOKEN")
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())),
    }
}

/// Fetches the cluster view from the node at `node` (a URL or `host:port`), sending `token`
/// as a bearer token when given. The error names the URL and says what failed: connecting,
/// an HTTP status, or a body that is not a view.
pub(crate) fn fetch_cluster(node: &str, token: Option<&str>) -> Result<ClusterView, String> {
    let url = format!("{}/v1/cluster", base_url(node));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let mut request = agent.get(&url);
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request
        .call()
        .map_err(|e| format!("cannot reach shoal node at {url}: {e}"))?;
    response
        .body_mut()
        .read_json::<ClusterView>()
        .map_err(|e| format!("{url} did not return a cluster view: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_token_file_is_an_error_not_an_open_api() {
        let path = std::env::temp_dir().join(format!("shoal-empty-token-{}", std::process::id()));
        std::fs::write(&path, " \n").unwrap();
        let err = api_token(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        std::fs::write(&path, " a-token-of-enough-length \n").unwrap();
        assert_eq!(
            api_token(Some(&path)).unwrap().as_deref(),
            Some("a-token-of-enough-length")
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn base_url_adds_scheme_and_drops_slash() {
        assert_eq!(base_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url("http://pi5.local:8080/"), "http://pi5.local:8080");
    }
}
