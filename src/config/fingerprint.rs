//! What a running instance compares on reload: the JSON text of each entry (positions and comments
//! left out), so "changed" means "the user changed it", whatever the typed config can compare.

use std::collections::BTreeMap;

use super::Config;
use super::json::{Node, Value};
use super::validate::Merged;

/// Top-level sections a reload does not apply (a change is reported as needing a restart).
pub const RESTART_SECTIONS: &[&str] = &["log", "dns", "transport", "policy", "api", "stats", "ops", "port"];

/// The canonical JSON of every part of a config that reload compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// One per `Config::inbounds` entry, in the same order.
    pub inbounds: Vec<String>,
    /// One per `Config::outbounds` entry, in the same order.
    pub outbounds: Vec<String>,
    /// `reverse.portals` entries by tag.
    pub portals: BTreeMap<String, String>,
    /// `reverse.bridges` entries by tag.
    pub bridges: BTreeMap<String, String>,
    /// The `routing` object.
    pub routing: String,
    /// Every section of [`RESTART_SECTIONS`] present, by name.
    pub restart: BTreeMap<&'static str, String>,
}

/// Compact JSON of a node, members in file order.
fn canon(node: &Node, out: &mut String) {
    match &node.value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(n),
        Value::String(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canon(n, out);
            }
            out.push(']');
        }
        Value::Object(members) => {
            out.push('{');
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(m.key.clone()).to_string());
                out.push(':');
                canon(&m.node, out);
            }
            out.push('}');
        }
    }
}

fn text(node: &Node) -> String {
    let mut s = String::new();
    canon(node, &mut s);
    s
}

fn member<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    let Value::Object(members) = &node.value else { return None };
    members.iter().rev().find(|m| m.key == key).map(|m| &m.node)
}

/// Pairs typed entries with their nodes: the typed list is the merged list in order, minus entries
/// refused (which fail the load), so each typed path is found at or after the previous match.
fn aligned(nodes: &[(&Node, String)], paths: impl Iterator<Item = String>) -> Vec<String> {
    let mut next = 0;
    paths
        .map(|path| match nodes[next..].iter().position(|(_, p)| *p == path) {
            Some(off) => {
                next += off + 1;
                text(nodes[next - 1].0)
            }
            // Not found: a unique text, so the entry counts as changed (safe, never wrongly kept).
            None => format!("<unmatched {path} at {:?}>", std::time::Instant::now()),
        })
        .collect()
}

pub(super) fn build(m: &Merged<'_>, config: &Config) -> Fingerprint {
    let mut f = Fingerprint {
        inbounds: aligned(&m.inbounds, config.inbounds.iter().map(|i| i.path.clone())),
        outbounds: aligned(&m.outbounds, config.outbounds.iter().map(|o| o.path.clone())),
        routing: m.singles.get("routing").map(|n| text(n)).unwrap_or_default(),
        ..Fingerprint::default()
    };
    for key in RESTART_SECTIONS {
        let node = if *key == "port" { m.port } else { m.singles.get(key).copied() };
        if let Some(n) = node {
            f.restart.insert(key, text(n));
        }
    }
    if let Some(reverse) = m.singles.get("reverse") {
        for (list, into) in [("portals", &mut f.portals), ("bridges", &mut f.bridges)] {
            if let Some(Value::Array(items)) = member(reverse, list).map(|n| &n.value) {
                for n in items {
                    if let Some(Value::String(tag)) = member(n, "tag").map(|t| &t.value) {
                        into.insert(tag.clone(), text(n));
                    }
                }
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::super::load_str_fingerprinted;

    const BASE: &str = r#"{
      "inbounds": [
        {"tag": "a", "port": 1080, "listen": "127.0.0.1", "protocol": "socks"},
        {"port": 1081, "listen": "127.0.0.1", "protocol": "vmess",
         "settings": {"clients": [{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}]}}
      ],
      "outbounds": [{"tag": "direct", "protocol": "freedom"}],
      "reverse": {"portals": [{"tag": "p", "domain": "x.example"}]},
      "routing": {"rules": [{"type": "field", "inboundTag": ["a"], "outboundTag": "direct"}]}
    }"#;

    fn fp(text: &str) -> super::Fingerprint {
        load_str_fingerprinted("t", text).expect("loads").1
    }

    #[test]
    fn whitespace_and_comments_do_not_count() {
        let spaced = BASE.replace("\n", "\n\n  ").replace("{\"tag\": \"a\"", "/* the socks one */ {\"tag\": \"a\"");
        assert_eq!(fp(BASE), fp(&spaced));
    }

    #[test]
    fn each_entry_changes_alone() {
        let (a, b) = (fp(BASE), fp(&BASE.replace("1080", "1090")));
        assert_ne!(a.inbounds[0], b.inbounds[0]);
        assert_eq!(a.inbounds[1], b.inbounds[1]);
        assert_eq!((a.outbounds, a.portals.clone(), a.routing.clone()), (b.outbounds, b.portals, b.routing));
        // A secret (the VMess id), which Debug output redacts, is compared too.
        let c = fp(&BASE.replace("098a63964b6b", "098a63964b6c"));
        assert_ne!(a.inbounds[1], c.inbounds[1]);
        assert_eq!(a.inbounds[0], c.inbounds[0]);
        let d = fp(&BASE.replace("x.example", "y.example"));
        assert_ne!(a.portals["p"], d.portals["p"]);
        assert!(d.restart.is_empty());
        let e = fp(&BASE.replace("\"inbounds\"", "\"dns\": {\"servers\": [\"1.1.1.1\"]}, \"inbounds\""));
        assert!(e.restart.contains_key("dns") && a.restart.is_empty());
    }
}
