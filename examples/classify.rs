//! Which language is a word in? A character-level GRU over Debian's word lists (packages
//! wamerican, wfrench, wngerman, witalian, wspanish): embedding -> GRU -> linear on the state
//! at each word's last letter. `cargo run --release --example classify`
use std::time::Instant;

use recur::prelude::*;

const LANGS: &str = "american-english french ngerman italian spanish";

struct Model {
    embed: Embedding,
    rnn: Gru,
    head: Linear,
}

impl Model {
    fn new(ps: &mut ParamStore<f32>, vocab: usize, rng: &mut Rng) -> Result<Self> {
        Ok(Model {
            embed: Embedding::new(ps, "embed.", vocab, 32, rng)?,
            rnn: Gru::new(ps, "rnn.", RecurrentConfig::new(32, 128), rng)?,
            head: Linear::new(ps, "head.", 128, 5, true, rng)?,
        })
    }

    fn forward(&self, cx: &mut Ctx<f32>, b: &SeqBatch) -> Result<Var> {
        let x = cx.embed(&self.embed, &b.ids, &[b.t_len, b.batch])?; // ids [T, B]
        let out = cx.recurrent(&self.rnn, x, Some(&b.lengths))?; // lengths in any order
        let last = cx.tape.select(out.h_n, 0)?; // [B, H], each word's state at its last letter
        cx.linear(&self.head, last)
    }
}

impl Objective<f32> for Model {
    type Batch = SeqBatch;
    fn loss(&mut self, cx: &mut Ctx<f32>, b: &SeqBatch) -> Result<Var> {
        let logits = self.forward(cx, b)?;
        cx.tape.cross_entropy(logits, &b.targets, None)
    }
}

fn main() -> Result<()> {
    let (mut rng, mut train, mut test) = (Rng::new(0), Vec::new(), Vec::new());
    for (lang, name) in LANGS.split(' ').enumerate() {
        let path = format!("/usr/share/dict/{name}");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!(
                "{path} is missing; install the word lists with\n  \
                sudo apt-get install wamerican wfrench wngerman witalian wspanish"
            );
            std::process::exit(1);
        };
        let mut words: Vec<String> = text
            .lines()
            .filter(|w| !w.contains('\''))
            .map(str::to_lowercase)
            .collect();
        rng.shuffle(&mut words);
        train.extend(words[..2400].iter().map(|w| (w.clone(), lang)));
        test.extend(words[2400..3000].iter().map(|w| (w.clone(), lang)));
    }
    let vocab = Vocab::build(Tokenizer::Chars, train.iter().map(|(w, _)| w.as_str()), 1)?;
    let dataset = |ex: &[(String, usize)]| {
        SeqDataset::new(
            ex.iter().map(|(w, _)| vocab.encode(w)).collect(),
            ex.iter().map(|e| e.1).collect(),
            64,
        )
    };
    let mut train_data = dataset(&train)?.with_plan(|p| p.shuffle(1).bucket(20));

    let mut ps = ParamStore::new();
    let mut model = Model::new(&mut ps, vocab.len(), &mut rng)?;
    let mut opt = Adam::new(AdamConfig::default().lr(3e-3))?;
    let start = Instant::now();
    let cfg = TrainerConfig::epochs(10).clip(1.0);
    Trainer::new(cfg).fit(&mut model, &mut ps, &mut opt, &mut train_data, None)?;
    let secs = start.elapsed().as_secs_f64();

    let b = dataset(&test)?.gather(&(0..test.len()).collect::<Vec<_>>())?;
    let mut tape = Tape::new();
    let logits = model.forward(&mut Ctx::eval(&mut tape, &ps), &b)?;
    let acc = tape.value(logits)?.accuracy(&b.targets)?;
    println!(
        "{} training words, {} test words, 5 languages: test accuracy {:.1} %, trained in {secs:.1} s on {} threads",
        train.len(),
        test.len(),
        100.0 * acc,
        recur::threads()
    );
    Ok(())
}
