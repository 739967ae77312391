//! The agent's TOML config: every top-level key, loading, and validation. Errors name the key,
//! the file line, and the fix. Unknown keys are errors.
//!
//! Where each key is defined: top-level tables here; `[[sources.simulated]]` in
//! `sources/simulated.rs`; `[[sources.replay]]` in `sources/replay.rs`; `[[sources.modbus]]`, `[[sources.opcua]]`, `[[sources.mqtt]]` in
//! `edge-sources` (`modbus/config.rs`, `opcua/config.rs`, `mqtt/config.rs`);
//! `[[outputs.file]]` in `outputs/file.rs`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_sources::modbus::ModbusSourceConfig;
use edge_sources::mqtt::MqttSourceConfig;
use edge_sources::opcua::OpcUaSourceConfig;
use edge_wire::config_check::{ConfigIssue, Issues, KeyPath, Seg};
use serde::Deserialize;

use crate::logging::LogConfig;
use crate::models::{BundlesConfig, ModelConfig, TagCatalog};
use crate::outputs::file::FileOutputConfig;
use crate::pipeline::PipelineConfig;
use crate::sources::replay::ReplaySourceConfig;
use crate::sources::simulated::SimulatedSourceConfig;
use crate::sources::SourcesConfig;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `[agent]`: this gateway's id and state directory (required).
    pub agent: AgentSection,
    /// `[log]`: level filter and format.
    #[serde(default)]
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus endpoint (off by default).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[pipeline]`: queue sizes, backpressure and the shutdown deadline.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `[[sources.<kind>]]`: every configured source, by kind.
    #[serde(default)]
    pub sources: SourcesConfig,
    /// `[[outputs.<kind>]]`: file and MQTT outputs.
    #[serde(default)]
    pub outputs: OutputsConfig,
    /// `[outbox]`: the on-disk queue behind MQTT outputs and the fleet sync.
    #[serde(default)]
    pub outbox: crate::outbox::OutboxConfig,
    /// `[bundles]`: the keys model bundles must be signed with.
    #[serde(default)]
    pub bundles: BundlesConfig,
    /// `[[models]]`: the models to run, in file order.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// `[sync]`: the fleet server (absent: no fleet sync).
    #[serde(default)]
    pub sync: Option<crate::sync::SyncConfig>,
}

/// `[agent]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// This gateway's id: in MQTT topics, client ids and at the fleet server. Letters,
    /// digits, `-`, `_`, `.`.
    pub id: String,
    /// Where the agent keeps state (outbox, bundles, OPC-UA PKI).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/edge-agent")
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus `/metrics` endpoint, e.g. `127.0.0.1:9898`. Off when unset.
    pub listen: Option<SocketAddr>,
}

/// `[outputs]`: one array of tables per kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// `[[outputs.file]]`: JSON-lines or CSV files, or standard output.
    #[serde(default)]
    pub file: Vec<FileOutputConfig>,
    /// `[[outputs.mqtt]]`: MQTT publishers (JSON or Sparkplug B), fed from the outbox.
    #[serde(default)]
    pub mqtt: Vec<crate::publish::MqttOutputConfig>,
}

/// A config that cannot be used, with every problem found.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or shape (unknown key, wrong type): toml's own message with line and column
    /// for the first, then the shape problems of every other section and table (toml's
    /// deserializer stops at the first one).
    Parse {
        /// The config file.
        path: PathBuf,
        /// toml's message for the first problem, with its line and column.
        message: String,
        /// Shape problems of the other sections and tables, in file order.
        more: Vec<Located>,
    },
    /// Semantic problems, each with its key path and line.
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found, in the order the checks ran.
        problems: Vec<Located>,
    },
}

/// A config issue resolved to a line in the file.
#[derive(Debug, Clone)]
pub struct Located {
    /// What is wrong and at which key.
    pub issue: ConfigIssue,
    /// 1-based line of the key (or of its deepest existing parent) in the file; `None` when
    /// not even the section is in the file.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config {}: {source}", path.display())
            }
            ConfigError::Parse {
                path,
                message,
                more,
            } => {
                write!(f, "config {}: {}", path.display(), message.trim_end())?;
                if !more.is_empty() {
                    write!(f, "\nand {} more problem(s):", more.len())?;
                    for p in more {
                        match p.line {
                            Some(l) => write!(
                                f,
                                "\n  {}:{l}: {}: {}",
                                path.display(),
                                p.issue.path,
                                p.issue.message
                            )?,
                            None => write!(
                                f,
                                "\n  {}: {}: {}",
                                path.display(),
                                p.issue.path,
                                p.issue.message
                            )?,
                        }
                    }
                }
                Ok(())
            }
            ConfigError::Invalid { path, problems } => {
                writeln!(
                    f,
                    "config {} has {} problem(s):",
                    path.display(),
                    problems.len()
                )?;
                for p in problems {
                    match p.line {
                        Some(l) => writeln!(
                            f,
                            "  {}:{l}: {}: {}",
                            path.display(),
                            p.issue.path,
                            p.issue.message
                        )?,
                        None => writeln!(
                            f,
                            "  {}: {}: {}",
                            path.display(),
                            p.issue.path,
                            p.issue.message
                        )?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// One line per problem (a parse error with its excerpt stays one entry), each naming
    /// the file, line and key where they are known: what a refused remote configuration
    /// reports to the fleet server.
    pub fn problems(&self) -> Vec<String> {
        let located = |path: &Path, p: &Located| match p.line {
            Some(l) => format!(
                "{}:{l}: {}: {}",
                path.display(),
                p.issue.path,
                p.issue.message
            ),
            None => format!("{}: {}: {}", path.display(), p.issue.path, p.issue.message),
        };
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Parse {
                path,
                message,
                more,
            } => std::iter::once(format!("{}: {}", path.display(), message.trim_end()))
                .chain(more.iter().map(|p| located(path, p)))
                .collect(),
            ConfigError::Invalid { path, problems } => {
                problems.iter().map(|p| located(path, p)).collect()
            }
        }
    }
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| {
            // toml stops at the first problem; the other sections and tables are checked
            // one by one so that every shape problem is reported at once (the first one,
            // which toml located to the column, is not repeated).
            let mut more = shape_problems(text);
            if !more.is_empty() {
                more.remove(0);
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
                more,
            }
        })?;
        let mut issues = Issues::default();
        cfg.validate(&mut issues);
        if issues.is_empty() {
            return Ok(cfg);
        }
        let problems = issues
            .0
            .into_iter()
            .map(|issue| Located {
                line: line_of(text, &issue.path),
                issue,
            })
            .collect();
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    fn validate(&self, issues: &mut Issues) {
        let root = KeyPath::root();
        let id = &self.agent.id;
        issues.check(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            root.key("agent").key("id"),
            || format!("`{id}` must be non-empty and use only letters, digits, `-`, `_`, `.` (it becomes part of MQTT topics)"),
        );
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            issues.push(
                root.key("log").key("level"),
                format!(
                    "`{}` is not a log filter: {e} (e.g. \"info\" or \"info,edge_sources=debug\")",
                    self.log.level
                ),
            );
        }
        let p = root.key("pipeline");
        issues.check(
            self.pipeline.channel_capacity >= 1,
            p.key("channel_capacity"),
            || "must be at least 1".into(),
        );
        issues.check(
            self.pipeline.output_capacity >= 1,
            p.key("output_capacity"),
            || "must be at least 1".into(),
        );
        issues.check(
            self.pipeline.shutdown_timeout >= Duration::from_millis(100),
            p.key("shutdown_timeout"),
            || "must be at least 100ms".into(),
        );

        // Source names and tag names: unique across the agent.
        let mut names = UniqueNames::new("source");
        let mut tags = UniqueNames::new("tag");
        let s = root.key("sources");
        issues.check(self.source_count() > 0, s.clone(), || {
            "no sources: add a [[sources.simulated]], [[sources.modbus]], [[sources.opcua]], [[sources.mqtt]] or [[sources.replay]] table".into()
        });
        let sc = &self.sources;
        check_sources(&sc.simulated, &s, &mut names, &mut tags, issues);
        check_sources(&sc.modbus, &s, &mut names, &mut tags, issues);
        check_sources(&sc.opcua, &s, &mut names, &mut tags, issues);
        check_sources(&sc.mqtt, &s, &mut names, &mut tags, issues);
        check_sources(&sc.replay, &s, &mut names, &mut tags, issues);
        let mut models = UniqueNames::new("model");
        for (i, m) in self.models.iter().enumerate() {
            let at = root.key("models").index(i);
            models.add(&m.name, at.key("name"), issues);
            m.validate(&at, issues);
        }
        issues.check(
            self.models.is_empty() || !self.bundles.trusted_keys.is_empty(),
            root.key("bundles").key("trusted_keys"),
            || {
                "models are configured but no key is trusted: add the ML team's public key, e.g. \
             trusted_keys = [\"/etc/edge-agent/keys/ml.pub.pem\"]"
                    .into()
            },
        );
        let mut outputs = UniqueNames::new("output");
        for (i, c) in self.outputs.file.iter().enumerate() {
            let at = root.key("outputs").key("file").index(i);
            outputs.add(&c.name, at.key("name"), issues);
            c.validate(&at, issues);
        }
        for (i, c) in self.outputs.mqtt.iter().enumerate() {
            let at = root.key("outputs").key("mqtt").index(i);
            outputs.add(&c.name, at.key("name"), issues);
            issues.check(cfg!(feature = "mqtt"), at.clone(), || {
                "this edge-agent build has no `mqtt` support (built without cargo feature `mqtt`)".into()
            });
            c.validate(&at, issues);
        }
        self.outbox.validate(&root.key("outbox"), issues);
        if let Some(sc) = &self.sync {
            sc.validate(&root.key("sync"), issues);
            for (i, c) in self.outputs.mqtt.iter().enumerate() {
                issues.check(
                    c.name != crate::sync::OUTBOX_DEST,
                    root.key("outputs").key("mqtt").index(i).key("name"),
                    || {
                        format!(
                            "`{}` is reserved for the fleet sync's outbox cursor",
                            c.name
                        )
                    },
                );
            }
        }
    }

    /// Number of configured sources of every kind.
    pub fn source_count(&self) -> usize {
        let s = &self.sources;
        s.simulated.len() + s.modbus.len() + s.opcua.len() + s.mqtt.len() + s.replay.len()
    }

    /// `check`'s one-line summary: sources, tags (named in the file, and the wildcard
    /// patterns that name tags at run time), outputs of every kind.
    pub fn summary(&self) -> String {
        let patterns: usize = self
            .sources
            .mqtt
            .iter()
            .map(|c| c.tags.iter().filter(|t| t.name.contains('{')).count())
            .sum();
        let mut tags = format!("{} tags", self.static_tag_count());
        if patterns > 0 {
            tags.push_str(&format!(" + {patterns} wildcard tag pattern(s)"));
        }
        let (files, mqtt) = (self.outputs.file.len(), self.outputs.mqtt.len());
        format!(
            "{} sources, {tags}, {} outputs ({files} file, {mqtt} MQTT), {} models",
            self.source_count(),
            files + mqtt,
            self.models.len()
        )
    }

    /// Tags named in the file (wildcard MQTT tag patterns, which create tags at run time, are
    /// not counted).
    pub fn static_tag_count(&self) -> usize {
        let s = &self.sources;
        let at = KeyPath::root();
        let n = |v: Vec<(String, KeyPath)>| v.len();
        s.simulated
            .iter()
            .map(|c| n(c.tag_keys(&at)))
            .sum::<usize>()
            + s.modbus.iter().map(|c| n(c.tag_keys(&at))).sum::<usize>()
            + s.opcua.iter().map(|c| n(c.tag_keys(&at))).sum::<usize>()
            + s.mqtt.iter().map(|c| n(c.tag_keys(&at))).sum::<usize>()
            + s.replay.iter().map(|c| n(c.tag_keys(&at))).sum::<usize>()
    }

    /// Where bundle state (the version floor) lives.
    pub fn bundle_dir(&self) -> PathBuf {
        self.agent.data_dir.join("bundles")
    }

    /// The tag names sources will produce, for checking feature specs.
    pub fn tag_catalog(&self) -> ConfigTags {
        let at = KeyPath::root();
        let s = &self.sources;
        let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
        for v in [
            s.simulated
                .iter()
                .flat_map(|c| c.tag_keys(&at))
                .collect::<Vec<_>>(),
            s.modbus.iter().flat_map(|c| c.tag_keys(&at)).collect(),
            s.opcua.iter().flat_map(|c| c.tag_keys(&at)).collect(),
            s.mqtt.iter().flat_map(|c| c.tag_keys(&at)).collect(),
            s.replay.iter().flat_map(|c| c.tag_keys(&at)).collect(),
        ] {
            known.extend(v.into_iter().map(|(n, _)| n));
        }
        let templates = s
            .mqtt
            .iter()
            .flat_map(|c| c.tags.iter())
            .filter(|t| t.name.contains('{'))
            .map(|t| t.name.clone())
            .collect();
        ConfigTags { known, templates }
    }

    /// Which source produces each tag (outputs that group tags by source use it).
    pub fn tag_owners(&self) -> TagOwners {
        let at = KeyPath::root();
        let s = &self.sources;
        let mut exact = std::collections::HashMap::new();
        let mut add = |source: &str, tags: Vec<(String, KeyPath)>| {
            for (t, _) in tags {
                exact.insert(t, source.to_string());
            }
        };
        for c in &s.simulated {
            add(&c.name, c.tag_keys(&at));
        }
        for c in &s.modbus {
            add(&c.name, c.tag_keys(&at));
        }
        for c in &s.opcua {
            add(&c.name, c.tag_keys(&at));
        }
        for c in &s.mqtt {
            add(&c.name, c.tag_keys(&at));
        }
        for c in &s.replay {
            add(&c.name, c.tag_keys(&at));
        }
        let templates = s
            .mqtt
            .iter()
            .flat_map(|c| {
                c.tags
                    .iter()
                    .filter(|t| t.name.contains('{'))
                    .map(|t| (t.name.clone(), c.name.clone()))
            })
            .collect();
        TagOwners { exact, templates }
    }

    /// Default PKI folder of OPC-UA sources.
    pub fn opcua_pki_dir(&self) -> PathBuf {
        self.agent.data_dir.join("pki").join("opcua")
    }
}

/// Tag names from the config: static names, plus MQTT name templates (`{1}.temp`) that
/// create names at runtime.
#[derive(Debug, Clone)]
pub struct ConfigTags {
    known: std::collections::HashSet<String>,
    templates: Vec<String>,
}

impl TagCatalog for ConfigTags {
    fn knows(&self, tag: &str) -> bool {
        self.known.contains(tag) || self.templates.iter().any(|t| template_matches(t, tag))
    }
}

/// Tag -> name of the source that produces it.
#[derive(Debug, Clone, Default)]
pub struct TagOwners {
    exact: std::collections::HashMap<String, String>,
    templates: Vec<(String, String)>,
}

impl TagOwners {
    /// The source that produces `tag`: an exact tag name first, then the first MQTT name template
    /// that matches; `None` for a tag no source names.
    pub fn owner(&self, tag: &str) -> Option<&str> {
        self.exact.get(tag).map(String::as_str).or_else(|| {
            self.templates
                .iter()
                .find(|(t, _)| template_matches(t, tag))
                .map(|(_, s)| s.as_str())
        })
    }
}

/// Whether `name` can come out of `template` (each placeholder matches one or more characters).
fn template_matches(template: &str, name: &str) -> bool {
    let mut parts: Vec<&str> = Vec::new();
    let mut rest = template;
    while let (Some(open), Some(close)) = (rest.find('{'), rest.find('}')) {
        if close < open {
            break;
        }
        parts.push(&rest[..open]);
        rest = &rest[close + 1..];
    }
    parts.push(rest);
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return template == name;
    }
    if !name.starts_with(first) || !name.ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let end = name.len() - last.len();
    let mut pos = first.len();
    for p in &parts[1..parts.len() - 1] {
        let from = pos + 1; // the placeholder before `p` takes at least one character
        match name.get(from..end).and_then(|r| r.find(p)) {
            Some(k) => pos = from + k + p.len(),
            None => return false,
        }
    }
    end > pos
}

/// What config loading needs from every `[[sources.<kind>]]` entry.
trait SourceEntry {
    /// The `<kind>` key, also the cargo feature that builds it.
    const KIND: &'static str;
    /// Whether this build can run the kind.
    const ENABLED: bool;
    fn name(&self) -> &str;
    fn validate(&self, at: &KeyPath, issues: &mut Issues);
    /// Tag names known at load time, each with the key that defines it.
    fn tag_keys(&self, at: &KeyPath) -> Vec<(String, KeyPath)>;
}

fn tag_list<'a>(at: &KeyPath, names: impl Iterator<Item = &'a str>) -> Vec<(String, KeyPath)> {
    names
        .enumerate()
        .map(|(j, n)| (n.to_string(), at.key("tags").index(j).key("name")))
        .collect()
}

impl SourceEntry for SimulatedSourceConfig {
    const KIND: &'static str = "simulated";
    const ENABLED: bool = true;
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        SimulatedSourceConfig::validate(self, at, issues)
    }
    fn tag_keys(&self, at: &KeyPath) -> Vec<(String, KeyPath)> {
        self.tag_names_with_paths(at)
    }
}

impl SourceEntry for ModbusSourceConfig {
    const KIND: &'static str = "modbus";
    const ENABLED: bool = cfg!(feature = "modbus");
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        ModbusSourceConfig::validate(self, at, issues)
    }
    fn tag_keys(&self, at: &KeyPath) -> Vec<(String, KeyPath)> {
        tag_list(at, self.tags.iter().map(|t| t.name.as_str()))
    }
}

impl SourceEntry for OpcUaSourceConfig {
    const KIND: &'static str = "opcua";
    const ENABLED: bool = cfg!(feature = "opcua");
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        OpcUaSourceConfig::validate(self, at, issues)
    }
    fn tag_keys(&self, at: &KeyPath) -> Vec<(String, KeyPath)> {
        tag_list(at, self.tags.iter().map(|t| t.name.as_str()))
    }
}

impl SourceEntry for MqttSourceConfig {
    const KIND: &'static str = "mqtt";
    const ENABLED: bool = cfg!(feature = "mqtt");
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        MqttSourceConfig::validate(self, at, issues)
    }
    fn tag_keys(&self, at: &KeyPath) -> Vec<(String, KeyPath)> {
        // Templated names (`{1}.temp`) become tags at runtime; skip them here, keep indices.
        tag_list(at, self.tags.iter().map(|t| t.name.as_str()))
            .into_iter()
            .filter(|(n, _)| !n.contains('{'))
            .collect()
    }
}

impl SourceEntry for ReplaySourceConfig {
    const KIND: &'static str = "replay";
    const ENABLED: bool = true;
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        ReplaySourceConfig::validate(self, at, issues)
    }
    fn tag_keys(&self, at: &KeyPath) -> Vec<(String, KeyPath)> {
        if self.tags.is_empty() {
            // From the recording: they are all defined by its path.
            return self
                .tag_names()
                .into_iter()
                .map(|t| (t, at.key("path")))
                .collect();
        }
        self.tags
            .iter()
            .enumerate()
            .map(|(j, t)| (t.clone(), at.key("tags").index(j)))
            .collect()
    }
}

/// Names that must be unique, with where each was first defined.
struct UniqueNames {
    what: &'static str,
    seen: HashMap<String, KeyPath>,
}

impl UniqueNames {
    fn new(what: &'static str) -> Self {
        UniqueNames {
            what,
            seen: HashMap::new(),
        }
    }

    fn add(&mut self, name: &str, at: KeyPath, issues: &mut Issues) {
        let what = self.what;
        if name.is_empty() {
            issues.push(at, format!("{what} name must not be empty"));
        } else if let Some(first) = self.seen.get(name) {
            issues.push(
                at,
                format!(
                    "{what} `{name}` is already defined at {first}; {what} names must be unique"
                ),
            );
        } else {
            self.seen.insert(name.to_string(), at);
        }
    }
}

fn check_sources<T: SourceEntry>(
    list: &[T],
    sources: &KeyPath,
    names: &mut UniqueNames,
    tags: &mut UniqueNames,
    issues: &mut Issues,
) {
    for (i, c) in list.iter().enumerate() {
        let at = sources.key(T::KIND).index(i);
        names.add(c.name(), at.key("name"), issues);
        issues.check(T::ENABLED, at.clone(), || {
            format!(
                "this edge-agent build has no `{0}` support (built without cargo feature `{0}`)",
                T::KIND
            )
        });
        c.validate(&at, issues);
        for (tag, key) in c.tag_keys(&at) {
            tags.add(&tag, key, issues);
        }
    }
}

/// Shape problems (unknown keys, wrong types, missing keys) of each section and of each table
/// of an array, deserialized one by one, in file order; empty when the text is not TOML at
/// all (toml's own message says where) or has no shape problem.
fn shape_problems(text: &str) -> Vec<Located> {
    use serde::de::DeserializeOwned;
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    fn one<T: DeserializeOwned>(v: &toml::Value, at: KeyPath, issues: &mut Issues) {
        if let Err(e) = v.clone().try_into::<T>() {
            issues.push(at, e.message().trim_end().to_string());
        }
    }
    fn each<T: DeserializeOwned>(v: &toml::Value, at: KeyPath, issues: &mut Issues) {
        match v.as_array() {
            Some(list) => {
                for (i, x) in list.iter().enumerate() {
                    one::<T>(x, at.index(i), issues);
                }
            }
            None => issues.push(at, "must be an array of tables (`[[...]]`)"),
        }
    }
    let mut issues = Issues::default();
    let root = KeyPath::root();
    if !table.contains_key("agent") {
        issues.push(root.key("agent"), "missing: an [agent] table with `id`");
    }
    for (k, v) in &table {
        let at = root.key(k);
        match k.as_str() {
            "agent" => one::<AgentSection>(v, at, &mut issues),
            "log" => one::<LogConfig>(v, at, &mut issues),
            "metrics" => one::<MetricsConfig>(v, at, &mut issues),
            "pipeline" => one::<PipelineConfig>(v, at, &mut issues),
            "outbox" => one::<crate::outbox::OutboxConfig>(v, at, &mut issues),
            "bundles" => one::<BundlesConfig>(v, at, &mut issues),
            "sync" => one::<crate::sync::SyncConfig>(v, at, &mut issues),
            "models" => each::<ModelConfig>(v, at, &mut issues),
            "sources" | "outputs" => {
                let Some(kinds) = v.as_table() else {
                    issues.push(at, "must be a table of arrays (`[[sources.KIND]]`)");
                    continue;
                };
                for (kind, list) in kinds {
                    let at = at.key(kind);
                    match (k.as_str(), kind.as_str()) {
                        ("sources", "simulated") => {
                            each::<SimulatedSourceConfig>(list, at, &mut issues)
                        }
                        ("sources", "modbus") => each::<ModbusSourceConfig>(list, at, &mut issues),
                        ("sources", "opcua") => each::<OpcUaSourceConfig>(list, at, &mut issues),
                        ("sources", "mqtt") => each::<MqttSourceConfig>(list, at, &mut issues),
                        ("sources", "replay") => each::<ReplaySourceConfig>(list, at, &mut issues),
                        ("outputs", "file") => each::<FileOutputConfig>(list, at, &mut issues),
                        ("outputs", "mqtt") => {
                            each::<crate::publish::MqttOutputConfig>(list, at, &mut issues)
                        }
                        ("sources", other) => issues.push(
                            at,
                            format!("unknown source kind `{other}`: simulated, modbus, opcua, mqtt or replay"),
                        ),
                        (_, other) => issues.push(
                            at,
                            format!("unknown output kind `{other}`: file or mqtt"),
                        ),
                    }
                }
            }
            other => issues.push(
                at,
                format!("unknown section `{other}`: agent, log, metrics, pipeline, sources, outputs, outbox, bundles, models or sync"),
            ),
        }
    }
    let mut out: Vec<Located> = issues
        .0
        .into_iter()
        .map(|issue| Located {
            line: line_of(text, &issue.path),
            issue,
        })
        .collect();
    out.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    out
}

/// 1-based line of the deepest existing key along `path` in `text`; `None` when the text is
/// not TOML or not even the path's first key is in it.
pub fn line_of(text: &str, path: &KeyPath) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut span = None;
    let mut cur: Option<&toml::de::DeValue<'_>> = None;
    for seg in &path.0 {
        let next = match (cur, seg) {
            (None, Seg::Key(k)) => root.get_ref().get(k.as_str()),
            (Some(v), Seg::Key(k)) => v.get(k.as_str()),
            (Some(v), Seg::Index(i)) => v.get(*i),
            (None, Seg::Index(_)) => None,
        };
        match next {
            Some(v) => {
                span = Some(v.span());
                cur = Some(v.get_ref());
            }
            None => break,
        }
    }
    let start = span?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[agent]
id = "gw-1"

[[sources.simulated]]
name = "plant"
"#;

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.agent.id, "gw-1");
        assert_eq!(c.pipeline.channel_capacity, 1024);
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.agent.data_dir, PathBuf::from("/var/lib/edge-agent"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = format!("{MINIMAL}colour = \"blue\"\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(e.contains("line 7"), "{e}");
    }

    /// The summary counts MQTT outputs and wildcard tags (it said "0 tags, 1 outputs" for a
    /// config with an MQTT source of wildcard tags and two MQTT outputs).
    #[test]
    fn the_summary_counts_every_output_and_wildcard_tags() {
        let text = r#"
[agent]
id = "gw-1"

[[sources.mqtt]]
name = "plant"
broker = { url = "mqtt://localhost:1883" }
[[sources.mqtt.tags]]
name = "{1}.vibration"
topic = "plant/+/vibration"
[[sources.mqtt.tags]]
name = "line1.flow"
topic = "plant/line1/flow"

[[outputs.file]]
name = "debug"
path = "-"

[[outputs.mqtt]]
name = "historian"
format = "json"
broker = { url = "mqtt://localhost:1883" }

[[outputs.mqtt]]
name = "ignition"
format = "sparkplug"
sparkplug = { group_id = "plant" }
broker = { url = "mqtt://localhost:1883" }
"#;
        let c = load(text).unwrap();
        assert_eq!(
            c.summary(),
            "1 sources, 1 tags + 1 wildcard tag pattern(s), 3 outputs (1 file, 2 MQTT), 0 models"
        );
    }

    /// toml stops at the first shape problem; check reports every section's (it reported
    /// only the first).
    #[test]
    fn every_shape_problem_is_reported_at_once() {
        let text = r#"
[agent]
id = "gw-1"
colour = "blue"

[pipeline]
channel_capacity = "lots"

[[sources.simulated]]
name = "plant"

[[models]]
name = "m"
bundel = "x.bundle"

[[outputs.mqtt]]
name = "scada"
format = "json"
qos = "one"

[outputs.mqtt.broker]
url = "mqtt://localhost:1883"
"#;
        let e = load(text).unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(
            e.contains("line 4"),
            "toml's own location for the first: {e}"
        );
        assert!(e.contains("and 3 more problem(s)"), "{e}");
        assert!(e.contains("test.toml:6: pipeline: invalid type"), "{e}");
        assert!(
            e.contains("test.toml:12: models[0]: unknown field `bundel`"),
            "{e}"
        );
        assert!(e.contains("outputs.mqtt[0]: invalid type"), "{e}");
        // A syntax error stops everything: toml's message alone, with its line.
        let e = load("[agent\nid = 1").unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("more problem"), "{e}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = r#"
[agent]
id = "gw/1"

[[sources.modbus]]
name = "plc"
tcp = { address = "nohost" }

[[sources.modbus.tags]]
name = "t1"
table = "coil"
address = 3
type = "f32"

[[sources.modbus.tags]]
name = "t1"
table = "holding"
address = 65535
type = "f32"
"#;
        let e = load(text).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &e else {
            panic!("{e}")
        };
        let find = |key: &str| {
            problems
                .iter()
                .find(|p| p.issue.path.to_string() == key)
                .unwrap_or_else(|| panic!("no problem at {key}: {e}"))
        };
        assert_eq!(find("agent.id").line, Some(3));
        assert_eq!(find("sources.modbus[0].tcp.address").line, Some(7));
        assert_eq!(find("sources.modbus[0].tags[0].type").line, Some(13));
        assert!(find("sources.modbus[0].tags[1].name")
            .issue
            .message
            .contains("already defined at sources.modbus[0].tags[0].name"));
        assert_eq!(find("sources.modbus[0].tags[1].address").line, Some(18));
        let shown = e.to_string();
        assert!(shown.contains("test.toml:3: agent.id:"), "{shown}");
    }

    #[test]
    fn mqtt_name_templates_match_runtime_names() {
        assert!(template_matches("{1}.temp", "pumpA.temp"));
        assert!(!template_matches("{1}.temp", ".temp"));
        assert!(template_matches("line.{1}.{2}", "line.a.b"));
        assert!(!template_matches("line.{1}.{2}", "plant.a.b"));
        assert!(!template_matches("{1}.temp", "pumpA.pressure"));
    }

    #[test]
    fn wrong_type_and_missing_table_are_parse_errors() {
        let e = load("[agent]\nid = 5\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("invalid type"), "{e}");
        let e = load("[[sources.simulated]]\nname = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `agent`"), "{e}");
        let e = load("[agent]\nid = \"a\"\n").unwrap_err().to_string();
        assert!(e.contains("no sources"), "{e}");
    }
}
