//! Characters that must not reach a log, a page or a terminal from a value
//! someone else chose.

/// Whether `c` is a control, format, line or paragraph separator, or
/// private-use character (Unicode Cc, Cf, Zl, Zp, Co): what must not reach
/// a log, a page or a terminal from a value someone else chose.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{890}'..='\u{891}'
                | '\u{8e2}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{e000}'..='\u{f8ff}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
                | '\u{f0000}'..='\u{ffffd}'
                | '\u{100000}'..='\u{10fffd}'
        )
}

/// Whether `c` is a bidirectional embedding, override or isolate control
/// (U+202A–U+202E, U+2066–U+2069): it makes the text after it display in
/// another order, so a name or note could read as something else ("Trojan
/// Source"). The marks U+200E and U+200F, which right-to-left writing
/// needs, are not among them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_bidi() {
        for c in [
            '\u{200b}', '\u{202e}', '\u{2066}', '\u{feff}', '\n', '\u{7}',
        ] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in ['a', 'é', 'א', ' ', '\u{1f600}'] {
            assert!(!is_invisible(c), "{c:?}");
        }
        assert!(is_bidi_control('\u{202e}') && is_bidi_control('\u{2068}'));
        assert!(!is_bidi_control('\u{200f}') && !is_bidi_control('a'));
    }
}
