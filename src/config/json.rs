//! A small strict JSON reader (Go `encoding/json` grammar: no trailing commas, no comments) that keeps
//! the byte offset of every value and key, so semantic errors can point at the exact line and column.

/// A JSON value with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The value.
    pub value: Value,
    /// Byte offset of the value's first byte.
    pub pos: usize,
    /// Index of the source file it came from.
    pub file: usize,
}

/// One `"key": value` member.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The decoded key.
    pub key: String,
    /// Byte offset of the key's opening quote.
    pub key_pos: usize,
    /// The value.
    pub node: Node,
}

/// A JSON value; numbers keep their text so integer fields can be checked exactly.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Node>),
    Object(Vec<Member>),
}

impl Value {
    /// A short name for messages ("expected a string, got an array").
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// A syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// Byte offset.
    pub pos: usize,
    /// What is wrong, worded like Go's decoder where it helps users search.
    pub message: String,
}

/// Deep enough for any real config, shallow enough to never overflow the stack.
const MAX_DEPTH: usize = 128;

/// Parses one JSON document.
pub(crate) fn parse(text: &str, file: usize) -> Result<Node, SyntaxError> {
    let mut p = Parser { s: text.as_bytes(), text, i: 0, file, depth: 0 };
    p.ws();
    let node = p.value()?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.unexpected("after top-level value"));
    }
    Ok(node)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
    file: usize,
    depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn err(&self, pos: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError { pos, message: message.into() }
    }

    fn unexpected(&self, context: &str) -> SyntaxError {
        match self.text.get(self.i..).and_then(|r| r.chars().next()) {
            None => self.err(self.i, "unexpected end of JSON input"),
            Some(c) => {
                let hint = if matches!(c, '}' | ']') && self.prev_is_comma() {
                    " (trailing commas are not allowed)"
                } else {
                    ""
                };
                self.err(self.i, format!("invalid character {c:?} {context}{hint}"))
            }
        }
    }

    fn prev_is_comma(&self) -> bool {
        self.s[..self.i].iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b',')
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        let pos = self.i;
        let value = match self.s.get(self.i) {
            Some(b'{') => self.nested(Self::object)?,
            Some(b'[') => self.nested(Self::array)?,
            Some(b'"') => Value::String(self.string()?),
            Some(b'-' | b'0'..=b'9') => Value::Number(self.number()?),
            Some(b't') => self.literal("true", Value::Bool(true))?,
            Some(b'f') => self.literal("false", Value::Bool(false))?,
            Some(b'n') => self.literal("null", Value::Null)?,
            _ => return Err(self.unexpected("looking for beginning of value")),
        };
        Ok(Node { value, pos, file: self.file })
    }

    fn nested(&mut self, f: fn(&mut Self) -> Result<Value, SyntaxError>) -> Result<Value, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(self.i, "exceeded max depth"));
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn literal(&mut self, word: &str, v: Value) -> Result<Value, SyntaxError> {
        for &b in word.as_bytes() {
            if self.s.get(self.i) != Some(&b) {
                return Err(self.unexpected(&format!("in literal {word} (expecting {:?})", b as char)));
            }
            self.i += 1;
        }
        Ok(v)
    }

    fn object(&mut self) -> Result<Value, SyntaxError> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.unexpected("looking for beginning of object key string"));
            }
            let key_pos = self.i;
            let key = self.string()?;
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return Err(self.unexpected("after object key"));
            }
            self.i += 1;
            self.ws();
            let node = self.value()?;
            members.push(Member { key, key_pos, node });
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.unexpected("after object key:value pair")),
            }
        }
    }

    fn array(&mut self) -> Result<Value, SyntaxError> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value()?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.unexpected("after array element")),
            }
        }
    }

    fn number(&mut self) -> Result<String, SyntaxError> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while let Some(b'0'..=b'9') = p.s.get(p.i) {
                p.i += 1;
            }
            p.i > from
        };
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        if self.s.get(self.i) == Some(&b'0') {
            self.i += 1;
        } else if !digits(self) {
            return Err(self.unexpected("in numeric literal"));
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !digits(self) {
                return Err(self.unexpected("after decimal point in numeric literal"));
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if !digits(self) {
                return Err(self.unexpected("in exponent of numeric literal"));
            }
        }
        Ok(self.text[start..self.i].to_string())
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let h = self.s.get(self.i..self.i + 4).ok_or_else(|| self.err(self.i, "unexpected end of JSON input"))?;
        let h = std::str::from_utf8(h).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
        let h = h.ok_or_else(|| self.err(self.i, "invalid character in \\u hexadecimal character escape"))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        loop {
            let run = self.i;
            while let Some(&b) = self.s.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(&self.text[run..self.i]);
            match self.s.get(self.i) {
                None => return Err(self.err(start, "unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.s.get(self.i) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) && self.s.get(self.i..self.i + 2) == Some(b"\\u")
                            {
                                let save = self.i;
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                } else {
                                    self.i = save;
                                    None
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            // Go replaces unpaired surrogates with U+FFFD.
                            out.push(c.unwrap_or('\u{FFFD}'));
                            continue;
                        }
                        _ => return Err(self.unexpected("in string escape code")),
                    };
                    out.push(c);
                    self.i += 1;
                }
                Some(_) => return Err(self.unexpected("in string literal")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_with_positions() {
        let n = parse(r#" {"a": [1, -2.5e3, "x\u00e9\ud83d\ude00"], "b": null} "#, 0).unwrap();
        assert_eq!(n.pos, 1);
        let Value::Object(m) = &n.value else { panic!() };
        assert_eq!(m[0].key, "a");
        assert_eq!(m[0].key_pos, 2);
        let Value::Array(items) = &m[0].node.value else { panic!() };
        assert!(matches!(&items[1].value, Value::Number(s) if s == "-2.5e3"));
        assert!(matches!(&items[2].value, Value::String(s) if s == "xé😀"));
        assert_eq!(items[2].pos, 19);
    }

    #[test]
    fn rejects_what_go_rejects() {
        for (t, pos) in [
            ("{\"a\": 1,}", 8),
            ("[1,]", 3),
            ("{\"a\" 1}", 5),
            ("01", 1),
            ("{} x", 3),
            ("\"a\tb\"", 2),
            ("'a'", 0),
            ("", 0),
            ("[1", 2),
        ] {
            let e = parse(t, 0).unwrap_err();
            assert_eq!(e.pos, pos, "{t}: {e:?}");
        }
        assert!(parse("{\"a\": 1,}", 0).unwrap_err().message.contains("trailing comma"));
    }
}
