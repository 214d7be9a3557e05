//! Who may publish jobs, and what each plugin may ask for (`[plugins.NAME]`).
//!
//! A plugin is the AMQP user the broker validated (`user_id`). A job without one, or from a
//! user that is not configured, ends `NOT_AUTHORIZED` before anything else happens. Every
//! refusal of the policy is `NOT_AUTHORIZED` too, with `error.details.policy` naming the rule,
//! except a malformed or self-contradicting request (`INVALID_REQUEST`).
//!
//! The credential profile is read from one place only, [`Policy::admit`], whichever way the
//! job asks for it (the `profile` field or a `model@profile` suffix), so there is one gate and
//! nothing slips past it.

use crate::config::{Config, Target};
use crate::limits::Quota;
use quarry_schemas::{ErrorCode, ErrorInfo, InputPart, Job};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Model aliases and their targets in order (the primary, then the fallbacks), as one
/// configuration has them.
pub type Aliases = BTreeMap<String, Vec<Target>>;

/// Every configured plugin's policy, and the routing table they choose from: what a
/// configuration reload replaces, as one piece.
pub struct Policies {
    plugins: BTreeMap<String, Arc<Policy>>,
    aliases: Arc<Aliases>,
    default_alias: String,
}

impl Policies {
    /// From `[plugins]` and `[routing]`.
    pub fn from_config(config: &Config) -> Self {
        let aliases = aliases(config);
        let plugins = config
            .plugins
            .iter()
            .map(|(name, plugin)| {
                let mut profiles: BTreeSet<String> = plugin.profiles.iter().cloned().collect();
                profiles.insert(plugin.default_profile.clone());
                let policy = Policy {
                    name: name.clone(),
                    default_alias: plugin
                        .default_model
                        .clone()
                        .unwrap_or_else(|| config.routing.default_alias.clone()),
                    model_override: plugin.model_override,
                    allowed_models: plugin.allowed_models.clone(),
                    any_target: false,
                    default_profile: plugin.default_profile.clone(),
                    profiles,
                    max_input_bytes: plugin.max_input_bytes,
                    max_images: plugin.max_images,
                    max_tokens: plugin.max_tokens,
                    agent_id_override: plugin.agent_id_override,
                    quota: Quota::of(name, plugin.limits),
                    aliases: aliases.clone(),
                };
                (name.clone(), Arc::new(policy))
            })
            .collect();
        Self {
            plugins,
            aliases,
            default_alias: config.routing.default_alias.clone(),
        }
    }

    /// How many plugins are configured.
    pub fn plugins(&self) -> usize {
        self.plugins.len()
    }

    /// The routing table.
    pub fn aliases(&self) -> &Aliases {
        &self.aliases
    }

    /// A plugin that may do anything with these aliases and any provider, without quotas
    /// (tests, tools).
    pub fn unrestricted(&self, name: &str) -> Policy {
        Policy {
            name: name.to_owned(),
            default_alias: self.default_alias.clone(),
            model_override: true,
            allowed_models: None,
            any_target: true,
            default_profile: crate::config::DEFAULT_PROFILE.to_owned(),
            profiles: BTreeSet::from([crate::config::DEFAULT_PROFILE.to_owned()]),
            max_input_bytes: None,
            max_images: None,
            max_tokens: None,
            agent_id_override: true,
            quota: Quota::default(),
            aliases: self.aliases.clone(),
        }
    }

    /// The policy of the job's publisher, or why it may not publish at all.
    pub fn identify(&self, user: Option<&str>) -> Result<Arc<Policy>, ErrorInfo> {
        let Some(user) = user.filter(|u| !u.is_empty()) else {
            return Err(refusal(
                "identity",
                "the job carries no user_id: the publishing plugin is unknown".to_owned(),
                json!({}),
            ));
        };
        self.plugins.get(user).cloned().ok_or_else(|| {
            refusal(
                "identity",
                format!("`{user}` is not a configured plugin"),
                json!({"plugin": user}),
            )
        })
    }
}

/// What one plugin may do.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The plugin (AMQP user) name.
    pub name: String,
    default_alias: String,
    model_override: bool,
    allowed_models: Option<Vec<String>>,
    /// Any configured provider's model may be named as a target (the development setup);
    /// otherwise only those `allowed_models` lists exactly.
    any_target: bool,
    default_profile: String,
    profiles: BTreeSet<String>,
    max_input_bytes: Option<usize>,
    max_images: Option<usize>,
    max_tokens: Option<u32>,
    agent_id_override: bool,
    /// Its quotas, with their buckets' names.
    pub(crate) quota: Quota,
    /// The routing table of the configuration this policy came from: a job runs on one
    /// configuration throughout, whatever a reload does meanwhile.
    aliases: Arc<Aliases>,
}

fn aliases(config: &Config) -> Arc<Aliases> {
    Arc::new(
        config
            .routing
            .aliases
            .iter()
            .map(|(name, route)| (name.clone(), route.targets()))
            .collect(),
    )
}

/// What a job runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A model alias of the routing table.
    Alias(String),
    /// One provider's model, named by the job (`provider/model`, or `provider` and `model`).
    Target {
        /// A provider's configured name.
        provider: String,
        /// Its model id.
        model: String,
    },
}

impl Choice {
    /// How the job named it, for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Alias(alias) => alias.clone(),
            Self::Target { provider, model } => format!("{provider}/{model}"),
        }
    }
}

/// What the policy granted a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// What the job runs on.
    pub choice: Choice,
    /// The credential profile whose keys serve it.
    pub profile: String,
    /// The output bound the job asked for (within the ceiling).
    pub max_tokens: Option<u32>,
    /// The plugin's ceiling, which also bounds the default a job without `max_tokens` gets.
    pub ceiling: Option<u32>,
}

impl Policy {
    /// The routing table this policy chooses from.
    pub fn aliases(&self) -> &Aliases {
        &self.aliases
    }

    /// Checks what a job asks for against the policy: alias and profile (however asked),
    /// input size, image count, output bound.
    pub fn admit(&self, job: &Job) -> Result<Grant, ErrorInfo> {
        let (named, suffix) = match job.model.as_deref() {
            None => (None, None),
            // The provider's own model id, as it is.
            Some(model) if job.provider.is_some() => (Some(model), None),
            // Neither an alias nor a profile has an `@`.
            Some(model) => match model.split_once('@') {
                None => (Some(model), None),
                Some((alias, profile)) => {
                    if alias.is_empty() || !crate::config::is_profile_name(profile) {
                        return Err(ErrorInfo::new(
                            ErrorCode::InvalidRequest,
                            format!(
                                "/model: `{model}` is not `alias`, `provider/model`, or either with `@profile` (profile: ^[A-Za-z0-9_:-]{{1,64}}$)"
                            ),
                        ));
                    }
                    (Some(alias), Some(profile))
                }
            },
        };
        let profile = match (job.profile.as_deref(), suffix) {
            (Some(field), Some(suffix)) if field != suffix => {
                return Err(ErrorInfo {
                    details: Some(json!({"profile": field, "model_suffix": suffix})),
                    ..ErrorInfo::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "conflicting credential profiles: `profile` is `{field}` and `model` asks for `{suffix}`"
                        ),
                    )
                });
            }
            (Some(asked), _) | (None, Some(asked)) => asked,
            (None, None) => self.default_profile.as_str(),
        };
        if !self.profiles.contains(profile) {
            return Err(refusal(
                "profiles",
                format!(
                    "plugin `{}` may not use credential profile `{profile}`",
                    self.name
                ),
                json!({"plugin": self.name, "profile": profile}),
            ));
        }
        let choice = self.choice(job.provider.as_deref(), named)?;
        if let Some(agent) = &job.agent_id
            && !self.agent_id_override
        {
            return Err(refusal(
                "agent_id",
                format!(
                    "plugin `{}` may not name the agent a job runs for (agent_id_override)",
                    self.name
                ),
                json!({"plugin": self.name, "agent_id": agent}),
            ));
        }
        let mut images = 0usize;
        // The schema is sent to the provider (and counted in its tokens) like the input.
        let mut bytes = job.instructions.as_deref().map_or(0, str::len)
            + job.json_schema.as_ref().map_or(0, |s| s.as_str().len());
        for part in &job.input {
            match part {
                InputPart::Text { text } => bytes += text.len(),
                InputPart::Image(image) => {
                    images += 1;
                    bytes += crate::pipeline::decoded_len(&image.data);
                }
            }
        }
        if let Some(limit) = self.max_images
            && images > limit
        {
            return Err(refusal(
                "max_images",
                format!(
                    "{images} images; plugin `{}` may send at most {limit}",
                    self.name
                ),
                json!({"plugin": self.name, "limit": limit, "actual": images}),
            ));
        }
        if let Some(limit) = self.max_input_bytes
            && bytes > limit
        {
            return Err(refusal(
                "max_input_bytes",
                format!(
                    "the input is {bytes} bytes; plugin `{}` may send at most {limit}",
                    self.name
                ),
                json!({"plugin": self.name, "limit": limit, "actual": bytes}),
            ));
        }
        let max_tokens = match (job.max_tokens, self.max_tokens) {
            (Some(asked), Some(limit)) if asked > limit => {
                return Err(refusal(
                    "max_tokens",
                    format!(
                        "max_tokens {asked}; plugin `{}` may ask for at most {limit}",
                        self.name
                    ),
                    json!({"plugin": self.name, "limit": limit, "actual": asked}),
                ));
            }
            (asked, _) => asked,
        };
        Ok(Grant {
            choice,
            profile: profile.to_owned(),
            max_tokens,
            ceiling: self.max_tokens,
        })
    }

    /// What the job runs on, if the plugin may choose it: its default alias, another alias
    /// with `model_override`, a target with `model_override` and an exact `allowed_models`
    /// entry (a `provider/*` pattern filters an alias's targets, it does not grant naming
    /// any model: a plugin cannot make up model ids, nor metric labels).
    fn choice(&self, provider: Option<&str>, named: Option<&str>) -> Result<Choice, ErrorInfo> {
        let choice = match (provider, named) {
            (Some(provider), Some(model)) => Choice::Target {
                provider: provider.to_owned(),
                model: model.to_owned(),
            },
            (None, Some(text)) if text.contains('/') => match text.split_once('/') {
                Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                    Choice::Target {
                        provider: provider.to_owned(),
                        model: model.to_owned(),
                    }
                }
                _ => {
                    return Err(ErrorInfo::new(
                        ErrorCode::InvalidRequest,
                        format!("/model: `{text}` is not `provider/model`"),
                    ));
                }
            },
            (_, Some(alias)) => Choice::Alias(alias.to_owned()),
            (_, None) => Choice::Alias(self.default_alias.clone()),
        };
        let chosen = choice != Choice::Alias(self.default_alias.clone());
        if chosen && !self.model_override {
            return Err(refusal(
                "model_override",
                format!(
                    "plugin `{}` may not choose a model; leave `model` unset (its model is `{}`)",
                    self.name, self.default_alias
                ),
                json!({"plugin": self.name, "model": choice.name()}),
            ));
        }
        if let Choice::Target { provider, model } = &choice {
            let listed = self.allowed_models.iter().flatten().any(|pattern| {
                pattern
                    .split_once('/')
                    .is_some_and(|(p, m)| p == provider && m == model)
            });
            if !(self.any_target || listed) {
                return Err(refusal(
                    "allowed_models",
                    format!(
                        "plugin `{}` may not name the target `{provider}/{model}`: the operator \
                         lists the targets a plugin may name in its allowed_models",
                        self.name
                    ),
                    json!({"plugin": self.name, "model": choice.name()}),
                ));
            }
        }
        Ok(choice)
    }

    /// The alias a job without `model` runs on.
    pub fn default_alias(&self) -> &str {
        &self.default_alias
    }

    /// Whether a job may choose what it runs on.
    pub fn model_override(&self) -> bool {
        self.model_override
    }

    /// Whether a job may name its agent.
    pub fn agent_id_override(&self) -> bool {
        self.agent_id_override
    }

    /// The profile a job without one gets, and every profile it may ask for.
    pub fn profiles(&self) -> (&str, impl Iterator<Item = &str>) {
        (
            self.default_profile.as_str(),
            self.profiles.iter().map(String::as_str),
        )
    }

    /// The plugin's `max_tokens` ceiling.
    pub fn max_tokens_ceiling(&self) -> Option<u32> {
        self.max_tokens
    }

    /// The `provider/model` targets a job may name: none without `model_override`, else the
    /// exact entries of `allowed_models`.
    pub fn nameable_targets(&self) -> Vec<(&str, &str)> {
        if !self.model_override {
            return Vec::new();
        }
        self.allowed_models
            .iter()
            .flatten()
            .filter_map(|pattern| pattern.split_once('/'))
            .filter(|(_, model)| *model != "*")
            .collect()
    }

    /// Whether this plugin's jobs may be dispatched to `target`.
    pub fn allows(&self, target: &Target) -> bool {
        let Some(allowed) = &self.allowed_models else {
            return true;
        };
        allowed.iter().any(|pattern| {
            pattern.split_once('/').is_some_and(|(provider, model)| {
                provider == target.provider && (model == "*" || model == target.model)
            })
        })
    }

    /// The `NOT_AUTHORIZED` error of an alias none of whose targets this plugin may reach.
    pub fn no_allowed_target(&self, alias: &str, denied: &[&Target]) -> ErrorInfo {
        let denied: Vec<String> = denied
            .iter()
            .map(|t| format!("{}/{}", t.provider, t.model))
            .collect();
        refusal(
            "allowed_models",
            format!(
                "plugin `{}` may not use any model alias `{alias}` routes to",
                self.name
            ),
            json!({"plugin": self.name, "model": alias, "denied": denied}),
        )
    }
}

fn refusal(policy: &str, message: String, mut details: serde_json::Value) -> ErrorInfo {
    details["policy"] = json!(policy);
    ErrorInfo {
        details: Some(details),
        ..ErrorInfo::new(ErrorCode::NotAuthorized, message)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::config::PluginConfig;
    use quarry_schemas::job::{ImageMime, ImagePart};

    fn policies(plugin: PluginConfig) -> Policies {
        let config = Config {
            plugins: BTreeMap::from([("receipts".to_owned(), plugin)]),
            ..Config::default()
        };
        Policies::from_config(&config)
    }

    fn job(model: Option<&str>, profile: Option<&str>) -> Job {
        let mut job = Job::new("j", vec![InputPart::Text { text: "hi".into() }]);
        job.model = model.map(str::to_owned);
        job.profile = profile.map(str::to_owned);
        job
    }

    fn code_and_rule(error: &ErrorInfo) -> (ErrorCode, Option<&str>) {
        (
            error.code,
            error.details.as_ref().and_then(|d| d["policy"].as_str()),
        )
    }

    #[test]
    fn identity_comes_from_the_user_id_of_a_configured_plugin() {
        let policies = policies(PluginConfig::default());
        assert_eq!(
            policies.identify(Some("receipts")).unwrap().name,
            "receipts"
        );
        for user in [None, Some(""), Some("guest"), Some("receipts2")] {
            let error = policies.identify(user).unwrap_err();
            assert_eq!(
                code_and_rule(&error),
                (ErrorCode::NotAuthorized, Some("identity")),
                "{user:?}"
            );
        }
    }

    #[test]
    fn a_job_names_its_agent_only_when_granted() {
        let mut asking = job(None, None);
        asking.agent_id = Some("agent-7".into());
        let refused = policies(PluginConfig::default())
            .identify(Some("receipts"))
            .unwrap()
            .admit(&asking)
            .unwrap_err();
        assert_eq!(
            code_and_rule(&refused),
            (ErrorCode::NotAuthorized, Some("agent_id"))
        );
        let granted = policies(PluginConfig {
            agent_id_override: true,
            ..PluginConfig::default()
        })
        .identify(Some("receipts"))
        .unwrap();
        assert!(granted.admit(&asking).is_ok());
    }

    #[test]
    fn the_profile_has_one_gate_whichever_way_it_is_asked_for() {
        let plugin = PluginConfig {
            profiles: vec!["team-a".into(), "openai-codex:work".into()],
            model_override: true,
            ..PluginConfig::default()
        };
        let policy = policies(plugin).identify(Some("receipts")).unwrap();
        let granted = |model, profile| policy.admit(&job(model, profile)).map(|g| g.profile);
        assert_eq!(granted(None, None), Ok("default".to_owned()));
        assert_eq!(
            granted(Some("fast@openai-codex:work"), None),
            Ok("openai-codex:work".to_owned()),
            "a profile with `:` after the last `@`"
        );
        assert_eq!(granted(None, Some("team-a")), Ok("team-a".to_owned()));
        assert_eq!(granted(Some("fast@team-a"), None), Ok("team-a".to_owned()));
        assert_eq!(
            granted(Some("fast@team-a"), Some("team-a")),
            Ok("team-a".to_owned())
        );
        for (model, profile) in [
            (None, Some("premium")),
            (Some("fast@premium"), None),
            (Some("default@premium"), Some("premium")),
        ] {
            let error = policy.admit(&job(model, profile)).unwrap_err();
            assert_eq!(
                code_and_rule(&error),
                (ErrorCode::NotAuthorized, Some("profiles")),
                "{model:?} {profile:?}"
            );
        }
        // Conflicting or malformed requests are refused before any gate.
        for (model, profile) in [
            (Some("fast@team-a"), Some("default")),
            (Some("fast@premium"), Some("team-a")),
            (Some("@team-a"), None),
            (Some("fast@"), None),
            (Some("fast@a@b"), None),
        ] {
            let error = policy.admit(&job(model, profile)).unwrap_err();
            assert_eq!(
                error.code,
                ErrorCode::InvalidRequest,
                "{model:?} {profile:?}"
            );
        }
    }

    #[test]
    fn model_override_size_and_output_limits() {
        let plugin = PluginConfig {
            default_model: Some("fast".into()),
            model_override: false,
            max_input_bytes: Some(100),
            max_images: Some(1),
            max_tokens: Some(500),
            ..PluginConfig::default()
        };
        let policy = policies(plugin).identify(Some("receipts")).unwrap();
        let grant = policy.admit(&job(None, None)).unwrap();
        assert_eq!(
            (grant.choice, grant.max_tokens, grant.ceiling),
            (Choice::Alias("fast".into()), None, Some(500)),
            "a job asking for no bound gets the default within the ceiling (in the pipeline)"
        );
        assert!(policy.admit(&job(Some("fast"), None)).is_ok());
        let refused = |job: &Job| {
            code_and_rule(&policy.admit(job).unwrap_err())
                .1
                .map(str::to_owned)
        };
        assert_eq!(
            refused(&job(Some("default"), None)).as_deref(),
            Some("model_override")
        );
        let mut big = job(None, None);
        big.input = vec![InputPart::Text {
            text: "x".repeat(101),
        }];
        assert_eq!(refused(&big).as_deref(), Some("max_input_bytes"));
        let image = InputPart::Image(ImagePart {
            mime: ImageMime::Png,
            data: "aGk=".into(),
        });
        let mut images = job(None, None);
        images.input = vec![image.clone(), image];
        assert_eq!(refused(&images).as_deref(), Some("max_images"));
        let mut greedy = job(None, None);
        greedy.max_tokens = Some(501);
        assert_eq!(refused(&greedy).as_deref(), Some("max_tokens"));
        greedy.max_tokens = Some(100);
        assert_eq!(policy.admit(&greedy).unwrap().max_tokens, Some(100));
    }

    #[test]
    fn allowed_models_match_provider_and_model() {
        let plugin = PluginConfig {
            allowed_models: Some(vec!["fake/fake-mini".into(), "other/*".into()]),
            ..PluginConfig::default()
        };
        let policy = policies(plugin).identify(Some("receipts")).unwrap();
        let target = |provider: &str, model: &str| Target {
            provider: provider.into(),
            model: model.into(),
            images: true,
        };
        assert!(policy.allows(&target("fake", "fake-mini")));
        assert!(!policy.allows(&target("fake", "fake-large")));
        assert!(policy.allows(&target("other", "anything")));
        assert!(!policy.allows(&target("fake2", "fake-mini")));
    }
}
