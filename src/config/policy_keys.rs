//! The compatibility policy for keys V2Ray 4.34 does not read (docs/CONFIG.md, "Keys V2Ray ignores").
//!
//! 4.34 decodes with Go's `encoding/json`, which drops unknown keys. oxray accepts such a config too
//! (refusing it would be a failed migration) but says so, because a typo that 4.34 drops silently
//! (`"outbondTag"`) changes what the proxy does. The message names the key and, when one is close, the
//! key it resembles; a few keys that users put in the wrong object get a hint saying where they belong.

use super::ctx::suggest;

/// Keys people write as comments or for their editor; 4.34 ignores them, so do we (with a note).
fn is_annotation(key: &str) -> bool {
    let k = key.trim_start();
    k == "$schema"
        || k.starts_with("//")
        || k.starts_with('#')
        || k.starts_with("/*")
        || k.starts_with('_')
        || k.eq_ignore_ascii_case("comment")
        || k.eq_ignore_ascii_case("comments")
        || k.eq_ignore_ascii_case("remark")
        || k.eq_ignore_ascii_case("remarks")
        || k.eq_ignore_ascii_case("description")
}

/// Keys that belong in another object: (key, objects where they are misplaced (by the last path part,
/// "" = any), where they belong).
const MISPLACED: &[(&str, &str, &str)] = &[
    ("path", "streamSettings", "wsSettings.path or httpSettings.path"),
    ("headers", "streamSettings", "wsSettings.headers"),
    ("host", "streamSettings", "httpSettings.host, or wsSettings.headers.Host"),
    ("serverName", "streamSettings", "tlsSettings.serverName"),
    ("allowInsecure", "streamSettings", "tlsSettings.allowInsecure"),
    ("alpn", "streamSettings", "tlsSettings.alpn"),
    ("certificates", "streamSettings", "tlsSettings.certificates"),
    ("header", "streamSettings", "tcpSettings.header (or kcpSettings/quicSettings)"),
    ("mark", "streamSettings", "sockopt.mark"),
    ("tcpFastOpen", "streamSettings", "sockopt.tcpFastOpen"),
    ("tproxy", "streamSettings", "sockopt.tproxy"),
    ("domainStrategy", "outbounds", "settings.domainStrategy (freedom) or routing.domainStrategy"),
    ("redirect", "outbounds", "settings.redirect (freedom)"),
    ("clients", "inbounds", "settings.clients"),
    ("vnext", "outbounds", "settings.vnext"),
    ("address", "inbounds", "settings.address (dokodemo-door)"),
    ("network", "inbounds", "settings.network (dokodemo-door) or streamSettings.network"),
    ("network", "outbounds", "streamSettings.network"),
    ("security", "inbounds", "streamSettings.security"),
    ("security", "outbounds", "streamSettings.security, or the user's security in settings.vnext"),
    ("rules", "", "routing.rules"),
    ("outboundTag", "", "a routing rule"),
    ("inboundTag", "", "a routing rule"),
];

/// The last named part of a JSON path: `inbounds[0].streamSettings` → `streamSettings`,
/// `outbounds[2]` → `outbounds`.
fn last_part(path: &str) -> &str {
    let p = path.rsplit('.').next().unwrap_or(path);
    p.split('[').next().unwrap_or(p)
}

/// The warning for a key that no field of the object at `path` takes (`known` are the fields it has).
pub(crate) fn unknown_key_message(key: &str, path: &str, known: &[&'static str]) -> String {
    if is_annotation(key) {
        return format!("key {key:?} is ignored (V2Ray 4.34 ignores it too)");
    }
    let mut msg = format!("unknown key {key:?} is ignored (as V2Ray 4.34 does)");
    let here = last_part(path);
    let hint = MISPLACED
        .iter()
        .find(|(k, at, _)| k.eq_ignore_ascii_case(key) && (at.is_empty() || *at == here) && !known.contains(k));
    if let Some(s) = suggest(key, known) {
        msg.push_str(&format!("; did you mean {s:?}?"));
    } else if let Some((_, _, to)) = hint {
        msg.push_str(&format!("; it belongs in {to}"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let rule = &["type", "outboundTag", "domain"];
        assert_eq!(
            unknown_key_message("outbondTag", "routing.rules[0]", rule),
            "unknown key \"outbondTag\" is ignored (as V2Ray 4.34 does); did you mean \"outboundTag\"?"
        );
        assert!(unknown_key_message("$schema", "", rule).contains("V2Ray 4.34 ignores it too"));
        assert!(unknown_key_message("//", "", rule).contains("ignores it too"));
        assert!(unknown_key_message("_comment", "", rule).contains("ignores it too"));
        let stream = &["network", "security", "wsSettings"];
        assert!(
            unknown_key_message("path", "inbounds[0].streamSettings", stream)
                .ends_with("belongs in wsSettings.path or httpSettings.path"),
        );
        assert_eq!(last_part("outbounds[2]"), "outbounds");
        assert!(!unknown_key_message("zzzzzz", "x", rule).contains("did you mean"));
    }
}
