//! Vocabularies of tokens (characters or whitespace-separated words) with padding and unknown
//! ids, and of class labels.

use std::collections::HashMap;

use crate::{Error, Result};

/// How a text is cut into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tokenizer {
    /// Every Unicode scalar value is a token.
    Chars,
    /// Tokens are separated by whitespace (runs of it count once).
    Words,
}

impl Tokenizer {
    /// The tokens of `text`.
    pub fn tokens(self, text: &str) -> Vec<&str> {
        match self {
            Tokenizer::Chars => text
                .char_indices()
                .map(|(i, c)| &text[i..i + c.len_utf8()])
                .collect(),
            Tokenizer::Words => text.split_whitespace().collect(),
        }
    }

    /// `"char"` or `"word"`.
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Chars => "char",
            Tokenizer::Words => "word",
        }
    }
}

/// A vocabulary of tokens for models over variable-length sequences: id 0 is padding
/// ([`Vocab::PAD`], never produced by [`Vocab::encode`]), id 1 stands for any token not in the
/// vocabulary ([`Vocab::UNK`]), and the tokens seen in training follow, most frequent first (ties
/// in the order of their first occurrence).
///
/// ```
/// use recur::data::{Tokenizer, Vocab};
///
/// let words = Vocab::build(Tokenizer::Words, ["the cat sat", "the dog"], 1)?;
/// assert_eq!(words.len(), 2 + 4);
/// assert_eq!(words.encode("the bird"), vec![2, Vocab::UNK]); // `the` is most frequent
/// assert_eq!(words.decode(&words.encode("the dog"))?, "the dog");
///
/// let chars = Vocab::build(Tokenizer::Chars, ["héllo"], 1)?;
/// assert_eq!(chars.encode("hé").len(), 2);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    tokenizer: Tokenizer,
    tokens: Vec<String>,
    index: HashMap<String, usize>,
}

impl Vocab {
    /// The padding id.
    pub const PAD: usize = 0;
    /// The id of tokens outside the vocabulary.
    pub const UNK: usize = 1;
    const SPECIALS: [&'static str; 2] = ["<pad>", "<unk>"];

    /// The vocabulary of `texts`, keeping tokens seen at least `min_count` times (at least 1).
    /// Fails if no token is kept.
    pub fn build<'t>(
        tokenizer: Tokenizer,
        texts: impl IntoIterator<Item = &'t str>,
        min_count: usize,
    ) -> Result<Self> {
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut order = 0;
        for text in texts {
            for tok in tokenizer.tokens(text) {
                let e = counts.entry(tok).or_insert((0, order));
                e.0 += 1;
                order += 1;
            }
        }
        let mut kept: Vec<(&str, (usize, usize))> = counts
            .into_iter()
            .filter(|(_, (n, _))| *n >= min_count.max(1))
            .collect();
        if kept.is_empty() {
            return Err(Error::invalid(
                "Vocab::build",
                format!("no token occurs at least {} times", min_count.max(1)),
            ));
        }
        kept.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.1.1.cmp(&b.1.1)));
        Self::from_tokens(tokenizer, kept.into_iter().map(|(t, _)| t.to_string()))
    }

    /// A vocabulary from its tokens in id order after the two special ids (as stored with a
    /// model). Fails on a duplicate or empty token, or a word token holding whitespace.
    pub fn from_tokens(
        tokenizer: Tokenizer,
        tokens: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        let mut all: Vec<String> = Self::SPECIALS.iter().map(|s| s.to_string()).collect();
        let mut index = HashMap::new();
        for tok in tokens {
            let bad = tok.is_empty()
                || (tokenizer == Tokenizer::Words && tok.chars().any(char::is_whitespace))
                || (tokenizer == Tokenizer::Chars && tok.chars().count() != 1);
            if bad {
                return Err(Error::invalid(
                    "Vocab::from_tokens",
                    format!("{tok:?} is not a {} token", tokenizer.name()),
                ));
            }
            if index.insert(tok.clone(), all.len()).is_some() {
                return Err(Error::invalid(
                    "Vocab::from_tokens",
                    format!("token {tok:?} appears twice"),
                ));
            }
            all.push(tok);
        }
        Ok(Vocab {
            tokenizer,
            tokens: all,
            index,
        })
    }

    /// How texts are cut into tokens.
    pub fn tokenizer(&self) -> Tokenizer {
        self.tokenizer
    }

    /// The number of ids, the two special ones included (the embedding's `num_embeddings`).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false: the special ids are always there.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens after the special ids, in id order (what [`Vocab::from_tokens`] takes).
    pub fn tokens(&self) -> &[String] {
        &self.tokens[Self::SPECIALS.len()..]
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn id(&self, token: &str) -> Option<usize> {
        self.index.get(token).copied()
    }

    /// The ids of `text`'s tokens; tokens outside the vocabulary become [`Vocab::UNK`].
    pub fn encode(&self, text: &str) -> Vec<usize> {
        self.tokenizer
            .tokens(text)
            .into_iter()
            .map(|t| self.id(t).unwrap_or(Self::UNK))
            .collect()
    }

    /// The text of `ids` (words joined by a space); padding is skipped.
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        let mut parts = Vec::with_capacity(ids.len());
        for &i in ids.iter().filter(|&&i| i != Self::PAD) {
            parts.push(self.tokens.get(i).ok_or(Error::IndexOutOfRange {
                op: "Vocab::decode",
                index: i,
                size: self.tokens.len(),
            })?);
        }
        let sep = if self.tokenizer == Tokenizer::Words {
            " "
        } else {
            ""
        };
        Ok(parts
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(sep))
    }
}

/// The class labels of a classification task, sorted, each with an id (its position).
///
/// ```
/// use recur::data::Labels;
/// let l = Labels::new(["fr", "en", "fr", "de"])?;
/// assert_eq!(l.names(), ["de", "en", "fr"]);
/// assert_eq!(l.id("fr")?, 2);
/// assert!(l.id("it").unwrap_err().to_string().contains("\"it\""));
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    /// The distinct labels among `labels`, sorted. Fails if there are none or one is empty.
    pub fn new<'a>(labels: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut names: Vec<String> = labels.into_iter().map(str::to_string).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() || names.iter().any(String::is_empty) {
            return Err(Error::invalid(
                "Labels::new",
                "needs at least one label, and no empty one",
            ));
        }
        Ok(Labels { names })
    }

    /// The number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The labels in id order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The id of `label`; an unknown label is an error naming it.
    pub fn id(&self, label: &str) -> Result<usize> {
        self.names
            .binary_search_by(|n| n.as_str().cmp(label))
            .map_err(|_| {
                Error::invalid(
                    "Labels::id",
                    format!("unknown label {label:?} (known: {})", self.names.join(", ")),
                )
            })
    }

    /// The label with id `id`.
    pub fn name(&self, id: usize) -> Result<&str> {
        self.names
            .get(id)
            .map(String::as_str)
            .ok_or(Error::IndexOutOfRange {
                op: "Labels::name",
                index: id,
                size: self.names.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_frequency_order_min_count_and_round_trip() {
        let v = Vocab::build(Tokenizer::Words, ["b a a", "c b a"], 2).unwrap();
        assert_eq!(v.tokens(), ["a", "b"]); // c occurs once
        assert_eq!(v.encode("a  c\tb"), vec![2, Vocab::UNK, 3]);
        let again = Vocab::from_tokens(Tokenizer::Words, v.tokens().to_vec()).unwrap();
        assert_eq!(again, v);
        assert!(Vocab::build(Tokenizer::Words, ["a"], 2).is_err());
        assert!(Vocab::from_tokens(Tokenizer::Words, ["a b".to_string()]).is_err());
        assert!(Vocab::from_tokens(Tokenizer::Chars, ["ab".to_string()]).is_err());
        assert!(Vocab::from_tokens(Tokenizer::Chars, ["a".into(), "a".into()]).is_err());
        let c = Vocab::build(Tokenizer::Chars, ["aéb"], 1).unwrap();
        assert_eq!(c.decode(&[0, 3, 2, 0]).unwrap(), "éa");
        assert!(c.decode(&[9]).is_err());
    }
}
