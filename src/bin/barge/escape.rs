//! Text from the peer made safe to print.
//!
//! Names, messages and LOG lines come from the helper, which may be on a
//! machine barge does not trust. Written as they are, their escape
//! sequences would drive the terminal (retitle it, clear it, move the
//! cursor, fake earlier output) and raw newlines would fake extra lines.
//! [`escape`] quotes them the way GNU `ls -b` quotes names, whether or not
//! the output is a terminal, so a captured pipe holds the same safe text.

use std::fmt::Write;

/// `bytes` with every control character and byte that is not UTF-8
/// written as an escape:
/// - `\a \b \t \n \v \f \r` and `\e` (ESC) for those controls;
/// - other C0 controls and DEL as three octal digits (`\001`, `\177`);
/// - C1 controls (U+0080 to U+009F, which some terminals obey as ESC
///   sequences) and bytes that are not UTF-8 as `\xNN`, one per byte;
/// - `\` itself as `\\`, so the result reads back unambiguously.
///
/// Everything else, including printable non-ASCII text, stays as it is.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\x0b' => out.push_str("\\v"),
                '\x0c' => out.push_str("\\f"),
                '\r' => out.push_str("\\r"),
                '\x1b' => out.push_str("\\e"),
                c if (c as u32) < 0x20 || c == '\x7f' => {
                    let _ = write!(out, "\\{:03o}", c as u32);
                }
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(escape(b"photo 2024.jpg"), "photo 2024.jpg");
        assert_eq!(
            escape("caf\u{e9} \u{65e5}\u{672c}".as_bytes()),
            "caf\u{e9} \u{65e5}\u{672c}"
        );
    }

    #[test]
    fn controls_are_escaped_as_gnu_ls_does() {
        assert_eq!(escape(b"\x1b]0;owned\x07"), "\\e]0;owned\\a");
        assert_eq!(escape(b"\x1b[2J"), "\\e[2J");
        assert_eq!(escape(b"a\r\nb\tc"), "a\\r\\nb\\tc");
        assert_eq!(escape(b"\x08\x0b\x0c"), "\\b\\v\\f");
        assert_eq!(escape(b"\x00\x01\x7f"), "\\000\\001\\177");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
    }

    #[test]
    fn invalid_utf8_and_c1_controls_become_hex_bytes() {
        assert_eq!(escape(b"a\xff\xfeb"), "a\\xff\\xfeb");
        // U+009B, the one-byte CSI, as UTF-8.
        assert_eq!(escape("x\u{9b}2J".as_bytes()), "x\\xc2\\x9b2J");
        // A truncated sequence.
        assert_eq!(escape(b"\xe6\x97"), "\\xe6\\x97");
    }

    #[test]
    fn nothing_raw_is_left() {
        let all: Vec<u8> = (0..=255).collect();
        let out = escape(&all);
        assert!(out.bytes().all(|b| b >= 0x20 && b != 0x7f), "{out:?}");
    }
}
