//! Text files as UTF-8, streaming: the encoding is taken from a BOM, detected
//! with chardetng on the first megabyte (GB18030/GBK, Big5, UTF-8, ...) or
//! given by the user; a [`DecodingReader`] then decodes the file as it is read,
//! so memory stays flat however big the file. The CSV delimiter is sniffed
//! from the header line here too. Parsing CSV records is not done here.

use std::io::{self, BufRead, Read};

use encoding_rs::{Decoder, Encoding};

/// How many bytes are looked at to detect the encoding and the delimiter.
pub const SNIFF_BYTES: usize = 1 << 20;

/// The encoding of a text file and how it was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub encoding: &'static Encoding,
    /// "bom", "detected" or "given".
    pub how: &'static str,
}

/// Decides the encoding of a file whose first bytes are `head` (`complete`: `head` is the whole file).
///
/// chardetng reports GB18030 text as GBK; `encoding_rs::GBK` decodes all of GB18030
/// (four-byte sequences included), so nothing is lost.
pub fn detect(head: &[u8], complete: bool, given: Option<&'static Encoding>, tld_cn: bool) -> Detected {
    if let Some((encoding, _)) = Encoding::for_bom(head) {
        return Detected { encoding, how: "bom" };
    }
    if let Some(encoding) = given {
        return Detected { encoding, how: "given" };
    }
    // Valid UTF-8 (allowing a character cut at the end of the sample) is UTF-8.
    let utf8 = match std::str::from_utf8(head) {
        Ok(_) => true,
        // Only a character cut at the end of an incomplete sample.
        Err(e) => !complete && e.error_len().is_none(),
    };
    if utf8 {
        return Detected {
            encoding: encoding_rs::UTF_8,
            how: "detected",
        };
    }
    let mut detector = chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Deny);
    detector.feed(head, complete);
    let tld: Option<&[u8]> = if tld_cn { Some(b"cn") } else { None };
    let mut encoding = detector.guess(tld, chardetng::Utf8Detection::Allow);
    if encoding == encoding_rs::GB18030 {
        encoding = encoding_rs::GBK;
    }
    Detected {
        encoding,
        how: "detected",
    }
}

/// Looks an encoding up by a user's label (`gbk`, `gb18030`, `utf-8`, `big5`, ...).
pub fn encoding_for_label(label: &str) -> Option<&'static Encoding> {
    let e = Encoding::for_label(label.trim().as_bytes())?;
    // GB18030 and GBK share one decoder in encoding_rs; keep the name users expect.
    Some(if e == encoding_rs::GB18030 { encoding_rs::GBK } else { e })
}

/// Human name of an encoding ("GBK" is reported as "GB18030/GBK": it decodes both).
pub fn encoding_name(e: &'static Encoding) -> &'static str {
    if e == encoding_rs::GBK { "GB18030/GBK" } else { e.name() }
}

/// A `Read` of UTF-8 over a `BufRead` in another encoding, decoded as it goes.
pub struct DecodingReader<R> {
    inner: R,
    decoder: Decoder,
    out: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// Whether malformed input was replaced by U+FFFD (wrong encoding?).
    pub had_replacements: bool,
}

impl<R: BufRead> DecodingReader<R> {
    pub fn new(inner: R, encoding: &'static Encoding) -> Self {
        DecodingReader {
            inner,
            decoder: encoding.new_decoder_with_bom_removal(),
            out: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            eof: false,
            had_replacements: false,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        while self.start == self.end && !self.eof {
            let input = self.inner.fill_buf()?;
            let last = input.is_empty();
            let (_, read, written, replaced) = self.decoder.decode_to_utf8(input, &mut self.out, last);
            self.had_replacements |= replaced;
            self.inner.consume(read);
            self.start = 0;
            self.end = written;
            if last {
                self.eof = true;
            }
        }
        Ok(())
    }
}

impl<R: BufRead> Read for DecodingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill()?;
        let n = (self.end - self.start).min(buf.len());
        buf[..n].copy_from_slice(&self.out[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// Picks the delimiter from the first lines of decoded text: the candidate that
/// appears most often, the same number of times in each of the first lines.
pub fn sniff_delimiter(text: &str) -> u8 {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(10).collect();
    let mut best = (b',', 0usize);
    for candidate in [b',', b'\t', b';', b'|'] {
        let counts: Vec<usize> = lines.iter().map(|l| count_outside_quotes(l, candidate)).collect();
        let Some(&first) = counts.first() else { continue };
        let consistent = counts.iter().filter(|&&c| c == first).count();
        // Favour a delimiter that splits the header and most following lines alike.
        let score = if first > 0 { first * consistent } else { 0 };
        if score > best.1 {
            best = (candidate, score);
        }
    }
    best.0
}

fn count_outside_quotes(line: &str, delimiter: u8) -> usize {
    let mut quoted = false;
    let mut n = 0;
    for b in line.bytes() {
        if b == b'"' {
            quoted = !quoted;
        } else if b == delimiter && !quoted {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gb18030_is_detected_and_decoded_streaming() {
        let text =
            "客户名称,联系人,联系方式\n上海某某科技有限公司,张伟,13800138000\n北京测试贸易有限公司,王芳,13900139000\n";
        let (bytes, _, _) = encoding_rs::GB18030.encode(text);
        let d = detect(&bytes, true, None, true);
        assert_eq!(d.encoding, encoding_rs::GBK);
        let mut out = String::new();
        // A tiny buffer so multi-byte characters are split across reads.
        let reader = io::BufReader::with_capacity(3, &bytes[..]);
        DecodingReader::new(reader, d.encoding)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn bom_and_utf8_and_labels() {
        assert_eq!(detect(b"\xEF\xBB\xBFa,b", true, None, true).how, "bom");
        assert_eq!(
            detect("客户,a".as_bytes(), true, None, true).encoding,
            encoding_rs::UTF_8
        );
        // A sample cut in the middle of a character is still UTF-8.
        let cut = &"客户".as_bytes()[..4];
        assert_eq!(detect(cut, false, None, true).encoding, encoding_rs::UTF_8);
        assert_eq!(encoding_for_label("gb18030"), Some(encoding_rs::GBK));
        assert_eq!(encoding_for_label("nope"), None);
    }

    #[test]
    fn delimiters_are_sniffed() {
        assert_eq!(sniff_delimiter("a,b,c\n1,2,3\n"), b',');
        assert_eq!(sniff_delimiter("a;b;c\n1;2,5;3\n"), b';');
        assert_eq!(sniff_delimiter("a\tb\tc\n1\t2\t3\n"), b'\t');
        assert_eq!(sniff_delimiter("\"a,x\"|b\n1|2\n"), b'|');
        assert_eq!(sniff_delimiter("single\n"), b',');
    }
}
