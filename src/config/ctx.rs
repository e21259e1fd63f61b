//! Error collection and typed access to positioned JSON values, with Go `encoding/json` key matching.

use super::ConfigError;
use super::json::{Member, Node, Value};

/// One loaded file: its name, its original text (for line:column) and its parsed tree.
pub(crate) struct Source {
    /// Name used in messages.
    pub name: String,
    line_starts: Vec<usize>,
    text: String,
}

impl Source {
    /// Indexes `text` for offset → line:column conversion.
    pub fn new(name: &str, text: &str) -> Source {
        let mut line_starts = vec![0];
        line_starts.extend(text.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i + 1));
        Source { name: name.to_string(), line_starts, text: text.to_string() }
    }

    /// 1-based line and column (in characters) of a byte offset in the original text.
    pub fn line_col(&self, pos: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= pos).max(1);
        let start = self.line_starts[line - 1];
        let end = pos.min(self.text.len());
        let col = self.text.get(start..end).map_or(end - start, |s| s.chars().count());
        (line, col + 1)
    }
}

/// Collects every problem instead of stopping at the first.
pub(crate) struct Ctx<'s> {
    /// The loaded files, indexed by `Node::file`.
    pub sources: &'s [Source],
    /// Problems found so far.
    pub errors: Vec<ConfigError>,
    /// (file index, byte offset) of each error, to report them in file order.
    pub order: Vec<(usize, usize)>,
    /// Accepted but doubtful values (V2Ray falls back silently; oxray says so).
    pub warnings: Vec<ConfigError>,
    /// geoip/geosite files, read once per load.
    pub geo: crate::router::geo::GeoLoader,
}

/// `a.b` (or `b` at the top).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// `a[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl<'s> Ctx<'s> {
    /// A context for `sources`, reading geo files from `assets`.
    pub fn new(sources: &'s [Source], assets: crate::router::geo::Assets) -> Ctx<'s> {
        Ctx {
            sources,
            errors: Vec::new(),
            order: Vec::new(),
            warnings: Vec::new(),
            geo: crate::router::geo::GeoLoader::new(assets),
        }
    }

    /// Records an error at a byte offset of a file.
    pub fn error_pos(&mut self, file: usize, pos: usize, path: &str, message: impl Into<String>) {
        let (name, location) = match self.sources.get(file) {
            Some(s) => (s.name.clone(), Some(s.line_col(pos))),
            None => (String::new(), None),
        };
        self.errors.push(ConfigError { file: name, path: path.to_string(), location, message: message.into() });
        self.order.push((file, pos));
    }

    /// The errors, in file and position order.
    pub fn into_errors(self) -> Vec<ConfigError> {
        let mut v: Vec<_> = self.order.into_iter().zip(self.errors).collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, e)| e).collect()
    }

    /// Records a warning at a byte offset of a file.
    pub fn warn_pos(&mut self, file: usize, pos: usize, path: &str, message: impl Into<String>) {
        let (name, location) = match self.sources.get(file) {
            Some(s) => (s.name.clone(), Some(s.line_col(pos))),
            None => (String::new(), None),
        };
        self.warnings.push(ConfigError { file: name, path: path.to_string(), location, message: message.into() });
    }

    /// Records a warning about a value: the config loads, but the user should know.
    pub fn warn(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.warn_pos(node.file, node.pos, path, message);
    }

    /// Records an error about a value.
    pub fn error(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.error_pos(node.file, node.pos, path, message);
    }

    /// Records an error about a key V2Ray knows but oxray does not implement yet.
    pub fn unsupported(&mut self, node: &Node, path: &str, what: &str) {
        self.error(node, path, format!("{what} is not supported yet by oxray"));
    }

    fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        self.error(node, path, format!("expected {expected}, got {}", node.value.kind()));
    }

    /// Views an object, resolving its keys against `known` like Go does; unknown keys are errors.
    pub fn obj<'n>(&mut self, node: &'n Node, path: &str, known: &[&'static str]) -> Option<Obj<'n>> {
        let Value::Object(members) = &node.value else {
            self.type_error(node, path, "an object");
            return None;
        };
        let mut fields = Vec::with_capacity(members.len());
        for m in members {
            // Go prefers an exact match, then takes the first case-insensitive one.
            let field =
                known.iter().find(|k| **k == m.key).or_else(|| known.iter().find(|k| k.eq_ignore_ascii_case(&m.key)));
            match field {
                Some(f) => fields.push((*f, m)),
                // V2Ray 4.34 ignores unknown keys: accepted, with a warning (errors under --strict).
                None => {
                    let msg = super::policy_keys::unknown_key_message(&m.key, path, known);
                    self.warn_pos(node.file, m.key_pos, &join(path, &m.key), msg);
                }
            }
        }
        Some(Obj { node, path: path.to_string(), fields })
    }

    /// A string value.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.type_error(node, path, "a string");
                None
            }
        }
    }

    /// A boolean value.
    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.type_error(node, path, "true or false");
                None
            }
        }
    }

    /// An integer that must fit `T` (Go refuses fractions, exponents and out-of-range numbers).
    pub fn int<T: TryFrom<i128> + std::fmt::Display + Copy>(
        &mut self,
        node: &Node,
        path: &str,
        min: T,
        max: T,
    ) -> Option<T> {
        let Value::Number(raw) = &node.value else {
            self.type_error(node, path, &format!("an integer in {min}..={max}"));
            return None;
        };
        match raw.parse::<i128>().ok().and_then(|v| T::try_from(v).ok()) {
            Some(v) => Some(v),
            None => {
                self.error(node, path, format!("expected an integer in {min}..={max}, got {raw}"));
                None
            }
        }
    }

    /// An array value.
    pub fn array<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Array(items) => Some(items),
            _ => {
                self.type_error(node, path, "an array");
                None
            }
        }
    }

    /// V2Ray's `StringList`: an array of strings, or one string split on commas (without trimming).
    /// Each item comes with the node and path to blame for it.
    pub fn string_list<'n>(&mut self, node: &'n Node, path: &str) -> Option<Vec<(String, &'n Node, String)>> {
        match &node.value {
            Value::String(s) => Some(s.split(',').map(|p| (p.to_string(), node, path.to_string())).collect()),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    match self.string(item, &p) {
                        Some(s) => out.push((s, item, p)),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.type_error(node, path, "a string or an array of strings");
                None
            }
        }
    }
}

/// An object whose keys were resolved to canonical field names.
pub(crate) struct Obj<'n> {
    /// The object node itself (blamed for missing keys).
    pub node: &'n Node,
    /// Its JSON path.
    pub path: String,
    fields: Vec<(&'static str, &'n Member)>,
}

impl<'n> Obj<'n> {
    /// An object with no keys (a missing `settings`), blamed on `node`.
    pub fn empty(node: &'n Node, path: String) -> Obj<'n> {
        Obj { node, path, fields: Vec::new() }
    }

    /// The value of a field; the last duplicate wins, and `null` counts as absent (as in Go).
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        let m = self.fields.iter().rev().find(|(f, _)| *f == name)?.1;
        (!matches!(m.node.value, Value::Null)).then_some(&m.node)
    }

    /// The path of a field.
    pub fn path_of(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// A string field.
    pub fn str(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<String> {
        let n = self.get(name)?;
        ctx.string(n, &self.path_of(name))
    }

    /// A boolean field.
    pub fn bool(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<bool> {
        let n = self.get(name)?;
        ctx.boolean(n, &self.path_of(name))
    }

    /// An integer field.
    pub fn int<T: TryFrom<i128> + std::fmt::Display + Copy>(
        &self,
        ctx: &mut Ctx<'_>,
        name: &str,
        min: T,
        max: T,
    ) -> Option<T> {
        let n = self.get(name)?;
        ctx.int(n, &self.path_of(name), min, max)
    }

    /// An array field.
    pub fn array(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<&'n [Node]> {
        let n = self.get(name)?;
        ctx.array(n, &self.path_of(name))
    }
}

/// True for values that configure nothing: `null`, `{}`, `[]`, `""`, `false`, `0`.
pub(crate) fn is_noop(node: &Node) -> bool {
    match &node.value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.parse::<f64>().is_ok_and(|v| v == 0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

/// The closest known key to a typo, if one is close enough to be a plausible intent.
pub(crate) fn suggest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    let limit = (key.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal-string-alignment distance: edits plus adjacent swaps ("tga" is one step from "tag").
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::super::json::parse;
    use super::*;

    #[test]
    fn keys_match_like_go() {
        let src = [Source::new("t", "")];
        let mut ctx = Ctx::new(&src, crate::router::geo::Assets::in_dir("/nonexistent"));
        let n = parse(r#"{"TAG": "a", "Protocol": "x", "tag": "b", "path": 1, "Path": 2}"#, 0).unwrap();
        let o = ctx.obj(&n, "", &["tag", "protocol", "path", "Path"]).unwrap();
        // Last duplicate wins; case-insensitive matches count as the same field.
        assert_eq!(o.str(&mut ctx, "tag").as_deref(), Some("b"));
        assert_eq!(o.str(&mut ctx, "protocol").as_deref(), Some("x"));
        // Exact match preferred when two fields differ only by case.
        assert_eq!(o.int::<u8>(&mut ctx, "path", 0, 255), Some(1));
        assert_eq!(o.int::<u8>(&mut ctx, "Path", 0, 255), Some(2));
        assert!(ctx.errors.is_empty());
    }

    #[test]
    fn unknown_keys_are_warnings_with_suggestions() {
        let src = [Source::new("t", "{\n \"protocl\": 1, \"zzzzzz\": 2}")];
        let mut ctx = Ctx::new(&src, crate::router::geo::Assets::in_dir("/nonexistent"));
        let n = parse("{\n \"protocl\": 1, \"zzzzzz\": 2}", 0).unwrap();
        ctx.obj(&n, "inbounds[0]", &["protocol", "port"]);
        assert!(ctx.errors.is_empty());
        let w = &ctx.warnings;
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].path, "inbounds[0].protocl");
        assert_eq!(w[0].location, Some((2, 2)));
        assert!(w[0].message.contains("did you mean \"protocol\""), "{}", w[0].message);
        assert!(!w[1].message.contains("did you mean"));
    }

    #[test]
    fn line_col_counts_characters() {
        let s = Source::new("t", "ab\n注释x\n");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(3), (2, 1));
        assert_eq!(s.line_col(9), (2, 3));
    }
}
