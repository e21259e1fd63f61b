//! Configuration: V2Ray v4 JSON (with comments) → raw serde structs → validated [`Config`].

mod ctx;
mod dns;
mod fingerprint;
mod json;
mod policy_keys;
mod proxies;
mod stream;
mod strip;
mod types;
mod validate;
mod values;

use std::fmt;
use std::path::Path;

use ctx::{Ctx, Source, index};
use json::{Node, Value};
use validate::{Merged, TOP_KEYS};

pub use crate::router::geo::Assets;
#[cfg(test)]
pub(crate) use dns::host_matcher;
pub use dns::{DnsConfig, DnsOutboundConfig, DnsServerConfig, DnsServerKind, HostEntry, HostMatcher, HostValue};
pub use fingerprint::{Fingerprint, RESTART_SECTIONS};
pub use proxies::{
    Account, FallbackConfig, FallbackDest, HttpInboundConfig, ProxyClientConfig, ProxyServer, ProxyUser,
    ShadowsocksClientConfig, ShadowsocksInboundConfig, ShadowsocksMethod, ShadowsocksServer, SocksInboundConfig,
    TrojanClient, TrojanInboundConfig, TrojanOutboundConfig, TrojanServer, VlessClient, VlessInboundConfig,
    VlessOutboundConfig, VlessServer,
};
pub use types::*;

/// One problem found in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<stdin>`, `<builtin>`).
    pub file: String,
    /// The JSON path, e.g. `inbounds[1].settings.port`; empty for whole-file problems.
    pub path: String,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a configuration (loading does not stop at the first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Loads and merges config files (later files override earlier ones, as V2Ray does), then validates.
/// geoip/geosite files are looked for where V2Ray 4.34 looks ([`Assets::from_env`]).
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Config, ConfigErrors> {
    load_files_with(paths, Assets::from_env())
}

/// [`load_files`] with the asset directory given.
pub fn load_files_with<P: AsRef<Path>>(paths: &[P], assets: Assets) -> Result<Config, ConfigErrors> {
    load_paths(paths, assets).map(|(c, _)| c)
}

fn load_paths<P: AsRef<Path>>(paths: &[P], assets: Assets) -> Result<(Config, Fingerprint), ConfigErrors> {
    let mut texts = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for p in paths {
        let p = p.as_ref();
        match std::fs::read_to_string(p) {
            Ok(t) => texts.push((p.display().to_string(), t)),
            Err(e) => errors.push(ConfigError {
                file: p.display().to_string(),
                path: String::new(),
                location: None,
                message: format!("cannot read the file: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    if texts.is_empty() {
        return Err(ConfigErrors(vec![ConfigError {
            file: String::new(),
            path: String::new(),
            location: None,
            message: "no config file given".into(),
        }]));
    }
    load_texts(&texts, assets)
}

/// [`load_files`], also returning the [`Fingerprint`] a reload compares with the running config's.
pub fn load_files_fingerprinted<P: AsRef<Path>>(paths: &[P]) -> Result<(Config, Fingerprint), ConfigErrors> {
    load_paths(paths, Assets::from_env())
}

/// Loads one config from text; `origin` names it in errors.
pub fn load_str(origin: &str, text: &str) -> Result<Config, ConfigErrors> {
    load_str_with(origin, text, Assets::from_env())
}

/// [`load_str`] with the asset directory given.
pub fn load_str_with(origin: &str, text: &str, assets: Assets) -> Result<Config, ConfigErrors> {
    load_texts(&[(origin.to_string(), text.to_string())], assets).map(|(c, _)| c)
}

/// [`load_str`] with its [`Fingerprint`] (tests of reload).
pub fn load_str_fingerprinted(origin: &str, text: &str) -> Result<(Config, Fingerprint), ConfigErrors> {
    load_texts(&[(origin.to_string(), text.to_string())], Assets::from_env())
}

/// Parses every text (collecting syntax errors from all of them), merges, validates.
fn load_texts(texts: &[(String, String)], assets: Assets) -> Result<(Config, Fingerprint), ConfigErrors> {
    let sources: Vec<Source> = texts.iter().map(|(name, text)| Source::new(name, text)).collect();
    let mut ctx = Ctx::new(&sources, assets);
    let mut trees = Vec::with_capacity(texts.len());
    for (file, (_, text)) in texts.iter().enumerate() {
        let parsed = strip::strip_comments(text)
            .map_err(|e| json::SyntaxError { pos: e.0, message: "unterminated /* comment".into() })
            .and_then(|clean| json::parse(&clean, file));
        match parsed {
            Ok(tree) => trees.push(tree),
            Err(e) => ctx.error_pos(file, e.pos, "", e.message),
        }
    }
    if !ctx.errors.is_empty() {
        return Err(ConfigErrors(ctx.into_errors()));
    }
    let merged = merge(&mut ctx, &trees, texts);
    let mut config = validate::build(&mut ctx, &merged);
    config.warnings = std::mem::take(&mut ctx.warnings);
    if ctx.errors.is_empty() {
        // Reverse-proxy mistakes 4.34 runs silently broken (names the JSON path; no position).
        let file = sources.first().map(|s| s.name.clone()).unwrap_or_default();
        for l in crate::lint::reverse(&config) {
            config.warnings.push(ConfigError { file: file.clone(), path: l.path, location: None, message: l.message });
        }
    }
    if !ctx.errors.is_empty() {
        return Err(ConfigErrors(ctx.into_errors()));
    }
    let fingerprint = fingerprint::build(&merged, &config);
    Ok((config, fingerprint))
}

/// Merges top levels as `infra/conf/v2ray.go Config.Override` does (the first file is taken whole).
fn merge<'n>(ctx: &mut Ctx<'_>, trees: &'n [Node], texts: &[(String, String)]) -> Merged<'n> {
    let mut m = Merged::default();
    let mut inbounds: Vec<(&'n Node, String)> = Vec::new();
    let mut outbounds: Vec<(&'n Node, String)> = Vec::new();
    let mut legacy_in: Vec<(&'n Node, String)> = Vec::new();
    let mut legacy_out: Vec<(&'n Node, String)> = Vec::new();
    for (i, tree) in trees.iter().enumerate() {
        let Some(top) = ctx.obj(tree, "", TOP_KEYS) else { continue };
        for key in ["log", "routing", "dns", "transport", "policy", "api", "stats", "reverse", "ops"] {
            if let Some(n) = top.get(key) {
                m.singles.insert(key, n);
            }
        }
        if i == 0 {
            m.port = top.get("port");
        }
        let single = |key: &str| top.get(key).map(|n| vec![(n, key.to_string())]);
        let list = |ctx: &mut Ctx<'_>, key: &str| -> Option<Vec<(&'n Node, String)>> {
            let items = top.array(ctx, key)?;
            Some(items.iter().enumerate().map(|(j, n)| (n, index(key, j))).collect())
        };
        // Legacy keys come before the lists; a later file replaces each of them whole.
        let legacy = |ctx: &mut Ctx<'_>, one: &str, many: &str, into: &mut Vec<(&'n Node, String)>| {
            let mut v = single(one).unwrap_or_default();
            v.extend(list(ctx, many).unwrap_or_default());
            if !v.is_empty() {
                *into = v;
            }
        };
        legacy(ctx, "inbound", "inboundDetour", &mut legacy_in);
        legacy(ctx, "outbound", "outboundDetour", &mut legacy_out);
        let tail = texts[i].0.to_lowercase().contains("tail");
        if let Some(new) = list(ctx, "inbounds") {
            merge_list(&mut inbounds, new, i == 0, false);
        }
        if let Some(new) = list(ctx, "outbounds") {
            merge_list(&mut outbounds, new, i == 0, !tail);
        }
    }
    m.inbounds = legacy_in.into_iter().chain(inbounds).collect();
    m.outbounds = legacy_out.into_iter().chain(outbounds).collect();
    m
}

/// One later file's `inbounds`/`outbounds`: a single entry replaces the one with its tag, else is
/// appended (outbounds: prepended unless the file name contains "tail"); a longer list replaces all.
fn merge_list<'n>(list: &mut Vec<(&'n Node, String)>, new: Vec<(&'n Node, String)>, first: bool, prepend: bool) {
    if new.is_empty() {
        return;
    }
    if first || list.is_empty() || new.len() > 1 {
        *list = new;
        return;
    }
    let Some(entry) = new.into_iter().next() else { return };
    let new_tag = tag_of(entry.0);
    if let Some(slot) = list.iter_mut().find(|(n, _)| tag_of(n) == new_tag) {
        *slot = entry;
    } else if prepend {
        list.insert(0, entry);
    } else {
        list.push(entry);
    }
}

/// The `tag` string of an inbound/outbound object ("" when absent, as Go's zero value).
fn tag_of(node: &Node) -> String {
    let Value::Object(members) = &node.value else { return String::new() };
    let m = members
        .iter()
        .rev()
        .find(|m| m.key == "tag")
        .or_else(|| members.iter().rev().find(|m| m.key.eq_ignore_ascii_case("tag")));
    match m.map(|m| &m.node.value) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}
