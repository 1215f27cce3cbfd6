//! A character vocabulary: the sorted set of distinct characters of a text.

use crate::{Error, Result};

/// The distinct characters of a text, sorted, each with an id (its position).
///
/// ```
/// use recur::data::CharVocab;
///
/// let v = CharVocab::from_text("hello")?;
/// assert_eq!(v.len(), 4); // e, h, l, o
/// let ids = v.encode("hole")?;
/// assert_eq!(v.decode(&ids)?, "hole");
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharVocab {
    chars: Vec<char>,
}

impl CharVocab {
    /// Builds the vocabulary of `text`. An empty text is an error.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        if chars.is_empty() {
            return Err(Error::invalid("CharVocab::from_text", "the text is empty"));
        }
        Ok(CharVocab { chars })
    }

    /// A vocabulary from an explicit list of characters (as stored in a checkpoint); the list
    /// must be non-empty, sorted and free of duplicates.
    pub fn from_chars(chars: Vec<char>) -> Result<Self> {
        if chars.is_empty() {
            return Err(Error::invalid("CharVocab::from_chars", "no characters"));
        }
        if chars.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid(
                "CharVocab::from_chars",
                "characters must be sorted and distinct",
            ));
        }
        Ok(CharVocab { chars })
    }

    /// The number of distinct characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Always false: a vocabulary has at least one character.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of `c`, if it is in the vocabulary.
    pub fn id(&self, c: char) -> Option<usize> {
        self.chars.binary_search(&c).ok()
    }

    /// The character with id `id`.
    pub fn char(&self, id: usize) -> Result<char> {
        self.chars.get(id).copied().ok_or(Error::IndexOutOfRange {
            op: "CharVocab::char",
            index: id,
            size: self.chars.len(),
        })
    }

    /// Encodes `text` as ids; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        text.chars()
            .map(|c| {
                self.id(c).ok_or_else(|| {
                    Error::invalid(
                        "CharVocab::encode",
                        format!("character {c:?} is not in the vocabulary"),
                    )
                })
            })
            .collect()
    }

    /// Decodes ids back to text.
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        ids.iter().map(|&i| self.char(i)).collect()
    }

    /// The entropy, in nats, of the text's character frequencies: the loss of the best model
    /// that ignores context (a unigram model).
    pub fn unigram_entropy(&self, ids: &[usize]) -> f64 {
        let mut counts = vec![0usize; self.len()];
        for &i in ids {
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
        let n = ids.len().max(1) as f64;
        counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.ln()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let v = CharVocab::from_text("héllo wörld").unwrap();
        let ids = v.encode("wörld").unwrap();
        assert_eq!(v.decode(&ids).unwrap(), "wörld");
        assert!(v.encode("z").unwrap_err().to_string().contains("'z'"));
        assert!(CharVocab::from_text("").is_err());
        assert!(v.char(v.len()).is_err());
        assert!(CharVocab::from_chars(vec!['b', 'a']).is_err());
        assert_eq!(CharVocab::from_chars(v.chars().to_vec()).unwrap(), v);
    }

    #[test]
    fn unigram_entropy_of_two_equal_symbols_is_ln2() {
        let v = CharVocab::from_text("abab").unwrap();
        let ids = v.encode("abab").unwrap();
        assert!((v.unigram_entropy(&ids) - 2f64.ln()).abs() < 1e-15);
    }
}
