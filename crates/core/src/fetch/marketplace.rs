//! The newest versions a Dify marketplace publishes, for `plugsync outdated`: one POST of the
//! batch lookup Dify's own API makes ([`crate::model::marketplace_batch_url`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::http::USER_AGENT;
use super::FetchError;
use crate::redact::redact_url;

/// The most a lookup's answer may weigh (a plugin's entry is a few KiB).
const MAX_ANSWER_BYTES: usize = 16 << 20;

#[derive(Deserialize)]
struct Answer {
    data: AnswerData,
}

#[derive(Deserialize)]
struct AnswerData {
    #[serde(default)]
    plugins: Vec<Published>,
}

#[derive(Deserialize)]
struct Published {
    plugin_id: String,
    latest_version: String,
}

/// The newest version the marketplace at `base` publishes of each of `plugin_ids`
/// (`author/name`), by plugin id; a plugin it does not know is absent. One request, bounded
/// by `timeout` from connecting to the last byte; no retry (a person is waiting, and
/// `outdated` is asked again as easily).
pub async fn latest_versions(
    base: &Url,
    plugin_ids: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, String>, FetchError> {
    if plugin_ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let url = crate::model::marketplace_batch_url(base);
    let shown = redact_url(&url);
    let lookup = |reason: String| FetchError::Lookup {
        url: shown.clone(),
        reason,
    };
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            FetchError::Timeout {
                what: format!("POST {shown}"),
                after: timeout,
            }
        } else {
            lookup(format!("the marketplace could not be reached: {e}"))
        }
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| lookup(format!("no HTTP client: {e}")))?;
    let body = serde_json::to_vec(&serde_json::json!({ "plugin_ids": plugin_ids }))
        .map_err(|e| lookup(e.to_string()))?;
    let response = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        return Err(lookup(format!("the marketplace answered {status}")));
    }
    let bytes = response.bytes().await.map_err(failed)?;
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err(lookup(format!(
            "an answer of {} bytes, over the {MAX_ANSWER_BYTES} byte limit",
            bytes.len()
        )));
    }
    let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
        lookup(format!(
            "not a marketplace's answer (expected data.plugins[].plugin_id and latest_version): {e}"
        ))
    })?;
    Ok(answer
        .data
        .plugins
        .into_iter()
        .filter(|p| plugin_ids.contains(&p.plugin_id))
        .map(|p| (p.plugin_id, p.latest_version))
        .collect())
}
