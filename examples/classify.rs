//! Which language is a word in? A character-level GRU over Debian's word lists (packages
//! wamerican, wfrench, wngerman, witalian, wspanish): embedding -> GRU -> linear on the state
//! at each word's last letter. `cargo run --release --example classify`
use recur::prelude::*;

const LANGS: &str = "american-english french ngerman italian spanish";

struct Model {
    embed: Embedding,
    rnn: Gru,
    head: Linear,
}

impl Model {
    fn forward(&self, cx: &mut Ctx<f32>, b: &SeqBatch) -> Result<Var> {
        let x = cx.embed(&self.embed, &b.ids, &[b.t_len, b.batch])?; // ids [T, B]
        let out = cx.recurrent(&self.rnn, x, Some(&b.lengths))?; // lengths in any order
        let last = cx.tape.select(out.h_n, 0)?; // [B, H]: each word's state at its last letter
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
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            eprintln!("{path}: apt-get install wamerican wfrench wngerman witalian wspanish");
            std::process::exit(1)
        });
        let lower = text.to_lowercase();
        let mut words: Vec<&str> = lower.lines().filter(|w| !w.contains('\'')).collect();
        rng.shuffle(&mut words);
        train.extend(words[..2400].iter().map(|w| (w.to_string(), lang)));
        test.extend(words[2400..3000].iter().map(|w| (w.to_string(), lang)));
    }
    let vocab = Vocab::build(Tokenizer::Chars, train.iter().map(|(w, _)| w.as_str()), 1)?;
    let dataset = |ex: &[(String, usize)]| {
        let (ids, labels) = ex.iter().map(|(w, y)| (vocab.encode(w), *y)).unzip();
        SeqDataset::new(ids, labels, 64)
    };
    let mut train_data = dataset(&train)?.with_plan(|p| p.shuffle(1).bucket(20));

    let mut ps = ParamStore::new();
    let mut model = Model {
        embed: Embedding::new(&mut ps, "embed.", vocab.len(), 32, &mut rng)?,
        rnn: Gru::new(&mut ps, "rnn.", RecurrentConfig::new(32, 128), &mut rng)?,
        head: Linear::new(&mut ps, "head.", 128, 5, true, &mut rng)?,
    };
    let mut opt = Adam::new(AdamConfig::default().lr(3e-3))?;
    let start = std::time::Instant::now();
    let mut trainer = Trainer::new(TrainerConfig::epochs(10).clip(1.0));
    trainer.fit(&mut model, &mut ps, &mut opt, &mut train_data, None)?;

    let b = dataset(&test)?.gather(&(0..test.len()).collect::<Vec<_>>())?;
    let mut tape = Tape::new();
    let logits = model.forward(&mut Ctx::eval(&mut tape, &ps), &b)?;
    let acc = 100.0 * tape.value(logits)?.accuracy(&b.targets)?;
    let secs = start.elapsed().as_secs_f64();
    println!("test accuracy {acc:.1} % after {secs:.1} s");
    Ok(())
}
