//! Tokenization: free text to lowercase word tokens that keep their byte spans in the
//! original, with sentence and clause boundaries and quoted regions marked.
//!
//! Normalization makes the vocabulary robust to how people type: case, curly and straight
//! apostrophes (dropped, so "don’t", "don't" and "dont" are one token), repeated letters
//! ("diiiie"), digits for letters ("su1c1de"), censoring asterisks ("k*ll"), and accents
//! (folded, so Spanish typed with or without them reads the same: "matarme", "quitármela").

/// What separates a token from the one before it; stronger boundaries end negation scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Boundary {
    /// Whitespace, a hyphen inside a word, an emoji.
    None,
    /// A colon: ends a clause but introduces what someone said, so it is no restart.
    Colon,
    /// A comma, semicolon, dash, bracket or ellipsis.
    Clause,
    /// A full stop, question or exclamation mark, or a line break.
    Sentence,
}

/// One word of the text.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    /// Byte offset of the first character in the original text.
    pub start: usize,
    /// Byte offset just past the last character in the original text.
    pub end: usize,
    /// Lowercase, apostrophes dropped, digits read as letters inside words.
    pub norm: String,
    /// `norm` with runs of 3+ equal letters squeezed to one and to two ("diiiie" → "die", "diie").
    pub squeezed: Option<(String, String)>,
    /// All digits (a number such as "5" or "3.5").
    pub numeric: bool,
    /// Contains a censoring `*` between letters ("k*ll").
    pub censored: bool,
    /// Index of the sentence the token is in.
    pub sentence: usize,
    /// What came between this token and the previous one.
    pub boundary_before: Boundary,
    /// Index into [`Tokenized::quotes`] when the token is inside quotation marks.
    pub quote: Option<usize>,
}

/// A region between matching quotation marks.
#[derive(Debug, Clone)]
pub(crate) struct QuoteSpan {
    /// First token inside the quotes.
    pub first: usize,
    /// Last token inside the quotes.
    pub last: usize,
    /// Byte offset of the opening quotation mark.
    pub start_byte: usize,
    /// Byte offset just past the closing quotation mark.
    pub end_byte: usize,
}

/// A text split into tokens.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokenized {
    pub tokens: Vec<Token>,
    pub quotes: Vec<QuoteSpan>,
}

#[derive(Debug, Clone, Copy)]
struct OpenQuote {
    first_token: usize,
    byte: usize,
}

struct Builder<'t> {
    text: &'t str,
    max_quote_tokens: usize,
    out: Tokenized,
    word_start: Option<usize>,
    word_end: usize,
    pending: Boundary,
    sentence: usize,
    open_double: Option<OpenQuote>,
    open_single: Option<OpenQuote>,
    /// The open single quote is a straight one: it ends with the sentence, since a stray
    /// "'cause" must not quote everything up to the next "friends'".
    open_single_straight: bool,
}

impl Builder<'_> {
    /// A sentence ends: a straight single quote still open was no quotation.
    fn end_sentence(&mut self) {
        self.raise(Boundary::Sentence);
        if self.open_single_straight {
            self.open_single = None;
            self.open_single_straight = false;
        }
    }

    fn raise(&mut self, boundary: Boundary) {
        self.pending = self.pending.max(boundary);
    }

    fn flush(&mut self) {
        let Some(start) = self.word_start.take() else {
            return;
        };
        let raw = self.text.get(start..self.word_end).unwrap_or_default();
        let norm = normalize_word(raw);
        if norm.is_empty() {
            return;
        }
        if self.pending == Boundary::Sentence && !self.out.tokens.is_empty() {
            self.sentence += 1;
        }
        let squeezed = squeeze(&norm);
        let numeric = norm.chars().all(|c| c.is_ascii_digit() || c == '.') && norm.chars().any(|c| c.is_ascii_digit());
        let censored = norm.contains('*');
        self.out.tokens.push(Token {
            start,
            end: self.word_end,
            norm,
            squeezed,
            numeric,
            censored,
            sentence: self.sentence,
            boundary_before: self.pending,
            quote: None,
        });
        self.pending = Boundary::None;
    }

    /// A title or abbreviation ("Dr.", "Mrs.") ends right at `byte`, so the full stop there
    /// does not end the sentence.
    fn abbreviation_ends_at(&self, byte: usize) -> bool {
        const ABBREVIATIONS: [&str; 12] = ["dr", "mr", "mrs", "ms", "mx", "prof", "st", "jr", "sr", "vs", "etc", "eg"];
        let Some(token) = self.out.tokens.last() else {
            return false;
        };
        token.end == byte && ABBREVIATIONS.contains(&token.norm.as_str())
    }

    fn open(&self, byte: usize) -> OpenQuote {
        OpenQuote { first_token: self.out.tokens.len(), byte }
    }

    fn close(&mut self, open: OpenQuote, close_byte_end: usize) {
        let Some(last) = self.out.tokens.len().checked_sub(1) else {
            return;
        };
        if last < open.first_token || last - open.first_token >= self.max_quote_tokens {
            // A stray or very long "quote" is more likely a typo than a citation; treating
            // pages of text as someone else's words could hide the patient's own.
            return;
        }
        let index = self.out.quotes.len();
        self.out.quotes.push(QuoteSpan {
            first: open.first_token,
            last,
            start_byte: open.byte,
            end_byte: close_byte_end,
        });
        for token in self.out.tokens.iter_mut().skip(open.first_token) {
            if token.quote.is_none() {
                token.quote = Some(index);
            }
        }
    }
}

/// Splits `text` into tokens; quotations longer than `max_quote_tokens` tokens are not
/// treated as quotations.
pub(crate) fn tokenize(text: &str, max_quote_tokens: usize) -> Tokenized {
    let mut chars = text.char_indices().peekable();
    let mut previous: Option<char> = None;
    let mut builder = Builder {
        text,
        max_quote_tokens,
        out: Tokenized::default(),
        word_start: None,
        word_end: 0,
        pending: Boundary::None,
        sentence: 0,
        open_double: None,
        open_single: None,
        open_single_straight: false,
    };
    let mut line_blank = false;
    let mut seen_newline = false;
    while let Some((byte, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let prev = previous.replace(c);
        if is_word_char(c, prev, next) {
            if builder.word_start.is_none() {
                builder.word_start = Some(byte);
            }
            builder.word_end = byte + c.len_utf8();
            line_blank = false;
            continue;
        }
        builder.flush();
        match c {
            '\n' => {
                builder.end_sentence();
                if seen_newline && line_blank {
                    // A blank line ends a paragraph: an unclosed quotation ends with it.
                    builder.open_double = None;
                    builder.open_single = None;
                }
                seen_newline = true;
                line_blank = true;
            }
            c if c.is_whitespace() => {}
            '.' => {
                line_blank = false;
                if prev == Some('.') || next == Some('.') {
                    builder.raise(Boundary::Clause);
                } else if !builder.abbreviation_ends_at(byte) {
                    builder.end_sentence();
                }
            }
            '!' | '?' => {
                line_blank = false;
                builder.end_sentence();
            }
            '…' | ',' | ';' | '(' | ')' | '[' | ']' | '–' | '—' => {
                line_blank = false;
                builder.raise(Boundary::Clause);
            }
            ':' => {
                line_blank = false;
                builder.raise(Boundary::Colon);
            }
            '-' => {
                line_blank = false;
                // A spaced dash separates clauses; a hyphen inside a word only splits it.
                if prev.is_none_or(char::is_whitespace) || next.is_none_or(char::is_whitespace) {
                    builder.raise(Boundary::Clause);
                }
            }
            '"' => {
                line_blank = false;
                match builder.open_double.take() {
                    Some(open) => builder.close(open, byte + c.len_utf8()),
                    None => builder.open_double = Some(builder.open(byte)),
                }
            }
            '“' | '„' | '«' => {
                line_blank = false;
                builder.open_double = Some(builder.open(byte));
            }
            '”' | '»' => {
                line_blank = false;
                if let Some(open) = builder.open_double.take() {
                    builder.close(open, byte + c.len_utf8());
                }
            }
            '‘' => {
                line_blank = false;
                if next.is_some_and(char::is_alphanumeric) {
                    builder.open_single = Some(builder.open(byte));
                    builder.open_single_straight = false;
                }
            }
            '’' | '\'' => {
                line_blank = false;
                // Not between letters (that is an apostrophe, inside a word): a closing quote
                // when a single quote is open, else a straight one opens a quotation when a
                // word follows it and none precedes it ("keeps saying 'i'm ready to die'").
                if let Some(open) = builder.open_single.take() {
                    builder.close(open, byte + c.len_utf8());
                } else if c == '\''
                    && prev.is_none_or(|p| !p.is_alphanumeric())
                    && next.is_some_and(char::is_alphanumeric)
                {
                    builder.open_single = Some(builder.open(byte));
                    builder.open_single_straight = true;
                }
            }
            _ => line_blank = false,
        }
    }
    builder.flush();
    builder.out
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '’' | 'ʼ')
}

fn is_word_char(c: char, prev: Option<char>, next: Option<char>) -> bool {
    if c.is_ascii_alphanumeric() || (!c.is_ascii() && c.is_alphanumeric()) {
        return true;
    }
    let prev_alnum = prev.is_some_and(char::is_alphanumeric);
    let next_alnum = next.is_some_and(char::is_alphanumeric);
    let letter_or_star = |side: Option<char>| side.is_some_and(|s| s.is_alphabetic() || s == '*');
    match c {
        _ if is_apostrophe(c) => prev_alnum && next_alnum,
        // Censoring inside a word ("k*ll", "s**cide"), not emphasis around one ("*die*").
        '*' => letter_or_star(prev) && letter_or_star(next),
        '@' | '$' => next.is_some_and(char::is_alphabetic),
        '.' => prev.is_some_and(|p| p.is_ascii_digit()) && next.is_some_and(|n| n.is_ascii_digit()),
        _ => false,
    }
}

/// Lowercases a raw word, drops apostrophes and reads leetspeak inside words that start
/// with a letter ("k1ll" → "kill", "$uicide" → "suicide"; "4am" stays "4am").
pub(crate) fn normalize_word(raw: &str) -> String {
    // Most words are plain ASCII letters: lowercase them in one pass.
    if raw.bytes().all(|byte| byte.is_ascii_alphabetic()) {
        return raw.to_ascii_lowercase();
    }
    let mut norm = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            _ if is_apostrophe(c) => {}
            '$' => norm.push('s'),
            '@' => norm.push('a'),
            _ => norm.extend(c.to_lowercase().map(fold_accent)),
        }
    }
    let starts_with_letter = norm.chars().next().is_some_and(char::is_alphabetic);
    if starts_with_letter && norm.chars().any(|c| c.is_ascii_digit()) {
        norm = norm
            .chars()
            .map(|c| match c {
                '0' => 'o',
                '1' => 'i',
                '3' => 'e',
                '4' => 'a',
                '5' => 's',
                '7' => 't',
                other => other,
            })
            .collect();
    }
    norm
}

/// A Latin letter without its accent: people type Spanish both ways ("está", "esta").
fn fold_accent(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'ñ' => 'n',
        'ç' => 'c',
        other => other,
    }
}

/// The two squeezed forms of a word with a run of three or more equal characters.
fn squeeze(norm: &str) -> Option<(String, String)> {
    if norm.len() < 3 || !norm.as_bytes().windows(3).any(|w| w.first() == w.get(1) && w.get(1) == w.get(2)) {
        return None;
    }
    let mut longest = 0;
    let mut run = 0;
    let mut previous = None;
    for c in norm.chars() {
        run = if Some(c) == previous { run + 1 } else { 1 };
        longest = usize::max(longest, run);
        previous = Some(c);
    }
    if longest < 3 {
        return None;
    }
    Some((squeeze_to(norm, 1), squeeze_to(norm, 2)))
}

fn squeeze_to(norm: &str, keep: usize) -> String {
    let chars: Vec<char> = norm.chars().collect();
    let mut out = String::with_capacity(norm.len());
    let mut start = 0;
    while start < chars.len() {
        let current = chars.get(start).copied();
        let mut end = start;
        while end < chars.len() && chars.get(end).copied() == current {
            end += 1;
        }
        let run = end - start;
        let kept = if run >= 3 { keep } else { run };
        if let Some(c) = current {
            out.extend(std::iter::repeat_n(c, kept));
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norms(text: &str) -> Vec<String> {
        tokenize(text, 60).tokens.into_iter().map(|t| t.norm).collect()
    }

    #[test]
    fn words_are_lowercased_and_apostrophes_dropped_whatever_their_shape() {
        assert_eq!(norms("I Don’t WANT"), ["i", "dont", "want"]);
        assert_eq!(norms("i'm  im   I’m"), ["im", "im", "im"]);
        assert_eq!(norms("self-harm"), ["self", "harm"]);
        assert_eq!(norms("Quitármela MAÑANA pingüino"), ["quitarmela", "manana", "pinguino"]);
    }

    #[test]
    fn spans_point_into_the_original_text() {
        let text = "Je   veux “mourir”";
        let tokens = tokenize(text, 60).tokens;
        let spans: Vec<&str> = tokens.iter().map(|t| &text[t.start..t.end]).collect();
        assert_eq!(spans, ["Je", "veux", "mourir"]);
    }

    #[test]
    fn leetspeak_censoring_and_stretched_letters_are_read() {
        assert_eq!(norms("su1c1de k1ll $uicide 4am 3.5"), ["suicide", "kill", "suicide", "4am", "3.5"]);
        let tokens = tokenize("k*ll *die* diiiie", 60).tokens;
        assert_eq!(tokens[0].norm, "k*ll");
        assert!(tokens[0].censored);
        assert_eq!(tokens[1].norm, "die");
        assert_eq!(tokens[2].squeezed, Some(("die".to_owned(), "diie".to_owned())));
    }

    #[test]
    fn titles_do_not_end_a_sentence() {
        let tokens = tokenize("Dr. Smith asked. Then", 60).tokens;
        let sentences: Vec<usize> = tokens.iter().map(|t| t.sentence).collect();
        assert_eq!(sentences, [0, 0, 0, 1]);
    }

    #[test]
    fn sentences_clauses_and_ellipses_are_boundaries_of_different_strength() {
        let tokens = tokenize("one, two. three... four\nfive: six", 60).tokens;
        let seen: Vec<(usize, Boundary)> = tokens.iter().map(|t| (t.sentence, t.boundary_before)).collect();
        assert_eq!(
            seen,
            [
                (0, Boundary::None),
                (0, Boundary::Clause),
                (1, Boundary::Sentence),
                (1, Boundary::Clause),
                (2, Boundary::Sentence),
                (2, Boundary::Colon)
            ]
        );
    }

    #[test]
    fn quotes_pair_up_straight_and_curly_but_stray_ones_quote_nothing() {
        let quoted = tokenize("she said \"i want out\" and “me too” ok ‘fine’", 60);
        let inside: Vec<&str> = quoted.tokens.iter().filter(|t| t.quote.is_some()).map(|t| t.norm.as_str()).collect();
        assert_eq!(inside, ["i", "want", "out", "me", "too", "fine"]);
        assert_eq!(quoted.quotes.len(), 3);
        let stray = tokenize("a \"stray quote and no end", 60);
        assert!(stray.tokens.iter().all(|t| t.quote.is_none()));
        let paragraph = tokenize("a \"start\n\nnew paragraph\" end", 60);
        assert!(paragraph.tokens.iter().all(|t| t.quote.is_none()));
        let straight = tokenize("he keeps saying 'i'm ready to die' lol, dogs' toys", 60);
        let inside: Vec<&str> = straight.tokens.iter().filter(|t| t.quote.is_some()).map(|t| t.norm.as_str()).collect();
        assert_eq!(inside, ["im", "ready", "to", "die"]);
        let stray = tokenize("'cause i want to die. my friends' dog", 60);
        assert!(stray.tokens.iter().all(|t| t.quote.is_none()));
        let long = tokenize("\"a b c d e f\"", 3);
        assert!(long.tokens.iter().all(|t| t.quote.is_none()));
    }
}
