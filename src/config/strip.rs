//! Comment stripping with the same state machine as V2Ray's `infra/conf/json/reader.go`.
//!
//! Comments are overwritten with spaces (newlines kept) instead of removed, so every byte offset of the
//! stripped text is the offset of the same byte in the original: positions found later stay exact.

/// An unterminated `/* … */` comment, found at this byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnterminatedComment(pub usize);

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Content,
    Escape,
    Double,
    DoubleEscape,
    Single,
    SingleEscape,
    LineComment,
    Block,
    BlockStar,
}

/// Blanks out `//…`, `#…` and `/*…*/` comments found outside `"…"`/`'…'` strings.
pub(crate) fn strip_comments(text: &str) -> Result<String, UnterminatedComment> {
    let src = text.as_bytes();
    let mut out = src.to_vec();
    let mut state = State::Content;
    let mut block_start = 0;
    let mut i = 0;
    while i < src.len() {
        let b = src[i];
        match state {
            State::Content => match b {
                b'"' => state = State::Double,
                b'\'' => state = State::Single,
                // Go keeps a backslash and the next byte verbatim outside strings.
                b'\\' => state = State::Escape,
                b'#' => {
                    out[i] = b' ';
                    state = State::LineComment;
                }
                b'/' if src.get(i + 1) == Some(&b'/') => {
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    i += 1;
                    state = State::LineComment;
                }
                b'/' if src.get(i + 1) == Some(&b'*') => {
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    block_start = i;
                    i += 1;
                    state = State::Block;
                }
                _ => {}
            },
            State::Escape => state = State::Content,
            State::Double => match b {
                b'"' => state = State::Content,
                b'\\' => state = State::DoubleEscape,
                _ => {}
            },
            State::DoubleEscape => state = State::Double,
            State::Single => match b {
                b'\'' => state = State::Content,
                b'\\' => state = State::SingleEscape,
                _ => {}
            },
            State::SingleEscape => state = State::Single,
            State::LineComment => {
                if b == b'\n' {
                    state = State::Content;
                } else {
                    out[i] = b' ';
                }
            }
            State::Block | State::BlockStar => {
                if state == State::BlockStar && b == b'/' {
                    state = State::Content;
                } else {
                    state = if b == b'*' { State::BlockStar } else { State::Block };
                }
                if b != b'\n' {
                    out[i] = b' ';
                }
            }
        }
        i += 1;
    }
    if matches!(state, State::Block | State::BlockStar) {
        return Err(UnterminatedComment(block_start));
    }
    // Only whole comments were blanked, and a comment that starts on an ASCII byte covers whole
    // characters up to an ASCII terminator, so the bytes are still UTF-8.
    String::from_utf8(out).map_err(|_| UnterminatedComment(block_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> String {
        strip_comments(t).unwrap()
    }

    #[test]
    fn line_comments_become_spaces() {
        assert_eq!(s("{ // hi\n}"), "{      \n}");
        assert_eq!(s("{ # hi\n}"), "{     \n}");
        assert_eq!(s("1 // 注释"), format!("1 {}", " ".repeat(2 + "注释".len() + 1)));
    }

    #[test]
    fn block_comments_keep_newlines_and_offsets() {
        let t = "{/* a\n b */\"k\": 1}";
        let out = s(t);
        assert_eq!(out.len(), t.len());
        assert_eq!(out, "{    \n     \"k\": 1}");
        assert_eq!(s("/**/1"), "    1");
        assert_eq!(s("/* ** */1"), "        1");
    }

    #[test]
    fn markers_inside_strings_are_kept() {
        for t in [
            r#"{"a": "http://x/#y /* z */"}"#,
            r#"{"a": "q\"//not a comment"}"#,
            r#"{"a": "back\\"}"#,
            r#"{'a': '#x'}"#,
        ] {
            assert_eq!(s(t), t);
        }
        // The escaped backslash closes the string: the `#` after it is a comment.
        assert_eq!(s(r#""a\\" #c"#), r#""a\\"   "#);
    }

    #[test]
    fn unterminated_block_comment_is_an_error() {
        assert_eq!(strip_comments("{ /* open\n"), Err(UnterminatedComment(2)));
        assert_eq!(strip_comments("{ /* open *"), Err(UnterminatedComment(2)));
        // An unterminated line comment is fine (end of file ends it).
        assert_eq!(s("{} // end"), "{}       ");
    }

    #[test]
    fn lone_slash_is_kept() {
        assert_eq!(s("1/2"), "1/2");
    }
}
