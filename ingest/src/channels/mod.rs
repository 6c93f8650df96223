//! The closed registry of channels: one tagged config enum, one function that
//! builds them all. Adding a channel = one module, one `ChannelConfig` variant,
//! one line in [`build`].

use std::sync::Arc;

use crate::channel::Channel;

pub mod shopify;
pub mod web_form;
pub mod webhook;
pub mod wechat;
pub mod youzan;

/// One configured channel, as written in the config file (`[[channels]]` with `type = "..."`).
/// Secrets are not written here: each names the environment variable that holds it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ChannelConfig {
    WebForm(web_form::WebFormConfig),
    #[serde(rename = "wechat")]
    WeChat(wechat::WeChatConfig),
    Youzan(youzan::YouzanConfig),
    Shopify(shopify::ShopifyConfig),
    Webhook(webhook::WebhookConfig),
}

/// Why the channel configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChannelConfigError {
    #[error("channel {channel}: environment variable {var} is not set; it must hold the {what}")]
    MissingSecret {
        channel: String,
        var: String,
        what: &'static str,
    },
    #[error("channel {channel}: {message}")]
    Invalid { channel: String, message: String },
    #[error("two channels are both mounted at /v1/channels/{kind}/{name}: give one of them another name")]
    Duplicate { kind: String, name: String },
}

/// A secret from the environment variable `var`; a missing or empty one is a clear error.
pub fn secret(
    env: &dyn Fn(&str) -> Option<String>,
    channel: &str,
    var: &str,
    what: &'static str,
) -> Result<String, ChannelConfigError> {
    env(var)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ChannelConfigError::MissingSecret {
            channel: channel.to_string(),
            var: var.to_string(),
            what,
        })
}

/// The phone region of a channel's `default_region`.
pub fn region(channel: &str, code: &str) -> Result<phonenumber::country::Id, ChannelConfigError> {
    proto::normalize::region(code).ok_or_else(|| ChannelConfigError::Invalid {
        channel: channel.to_string(),
        message: format!("default_region {code:?} is not an ISO 3166 region code such as CN or US"),
    })
}

/// Builds every configured channel. The default web form (any form id) is always there.
pub fn build(
    configs: &[ChannelConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Arc<dyn Channel>>, ChannelConfigError> {
    let mut out: Vec<Arc<dyn Channel>> = Vec::new();
    for config in configs {
        let channel: Arc<dyn Channel> = match config {
            ChannelConfig::WebForm(c) => Arc::new(web_form::WebForm::new(c.clone())?),
            ChannelConfig::WeChat(c) => Arc::new(wechat::WeChat::new(c.clone(), env)?),
            ChannelConfig::Youzan(c) => Arc::new(youzan::Youzan::new(c.clone(), env)?),
            ChannelConfig::Shopify(c) => Arc::new(shopify::Shopify::new(c.clone(), env)?),
            ChannelConfig::Webhook(c) => Arc::new(webhook::Webhook::new(c.clone(), env)?),
        };
        if out
            .iter()
            .any(|c| c.kind() == channel.kind() && c.instance() == channel.instance())
        {
            return Err(ChannelConfigError::Duplicate {
                kind: channel.kind().into(),
                name: channel.instance().into(),
            });
        }
        out.push(channel);
    }
    if !out.iter().any(|c| c.kind() == web_form::KIND && c.instance() == "*") {
        out.push(Arc::new(web_form::WebForm::new(web_form::WebFormConfig::default())?));
    }
    let _ = env;
    Ok(out)
}

/// The proptest budget of every channel parser's "never panics" tests: 256 cases (each test
/// well under a second) and at most 10 s of shrinking when one fails, so CI time is bounded
/// whether they pass or not.
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases: 256,
        max_shrink_time: 10_000,
        ..proptest::prelude::ProptestConfig::default()
    }
}
