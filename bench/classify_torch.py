#!/usr/bin/env python3
"""The PyTorch twin of examples/classify.rs, to compare accuracy and training time.

The language of a word from Debian's word lists (american-english, french, ngerman, italian,
spanish under /usr/share/dict): 2,400 training and 600 test words per language, characters
embedded in 32 dimensions -> GRU(32, 128) -> Linear(128, 5) on each word's last real state
(pack_padded_sequence, enforce_sorted=False), Adam (lr 3e-3), gradient norm clipped at 1.0,
batches of 64 bucketed by length in pools of 20 batches, 10 epochs. The words are drawn with
Python's generator, so they differ from the example's; the task and sizes are the same.

Usage: /tmp/tv/bin/python bench/classify_torch.py [--threads 2] [--seed 0]

The twin of `recur classify train` on the same task, from the same files:

    /tmp/tv/bin/python bench/classify_torch.py --write-tsv DIR   # DIR/train.tsv, valid.tsv
    recur classify train --train DIR/train.tsv --valid DIR/valid.tsv --out RUN \
        --epochs 10 --batch 64 --lr 3e-3 --threads 2
    /tmp/tv/bin/python bench/classify_torch.py --train DIR/train.tsv --valid DIR/valid.tsv \
        --epochs 10 --batch 64 --lr 3e-3 --threads 2

In that mode it trains what `recur classify train` does by default (characters embedded in 32
dimensions -> GRU(32, 128) -> Linear on the last real state, Adam, gradient norm clipped at
5.0, batches bucketed by length in pools of 20, validation after every epoch) and reports the
validation accuracy of the epoch with the best validation loss, as recur does.
"""

import argparse
import random
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

LANGS = ["american-english", "french", "ngerman", "italian", "spanish"]


class Model(nn.Module):
    def __init__(self, vocab, classes=len(LANGS)):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.GRU(32, 128)
        self.head = nn.Linear(128, classes)

    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.embed(ids), lengths, enforce_sorted=False)
        _, h_n = self.rnn(packed)
        return self.head(h_n[0])


def batch(words, vocab):
    t = max(len(w) for w in words)
    ids = torch.zeros(t, len(words), dtype=torch.long)
    for b, w in enumerate(words):
        ids[: len(w), b] = torch.tensor([vocab.get(c, 1) for c in w])
    return ids, torch.tensor([len(w) for w in words])


def word_lists(seed):
    """2,400 training and 600 test words per language, drawn with Python's generator."""
    rng = random.Random(seed)
    train, test = [], []
    for lang, name in enumerate(LANGS):
        words = [w.lower() for w in open(f"/usr/share/dict/{name}", encoding="utf-8").read().split("\n")
                 if w and "'" not in w]
        rng.shuffle(words)
        train += [(w, lang) for w in words[:2400]]
        test += [(w, lang) for w in words[2400:3000]]
    return train, test


def write_tsv(directory, seed):
    import os
    os.makedirs(directory, exist_ok=True)
    train, test = word_lists(seed)
    for name, rows in [("train.tsv", train), ("valid.tsv", test)]:
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.writelines(f"{LANGS[lang]}\t{w}\n" for w, lang in rows)


def read_tsv(path):
    rows = [line.rstrip("\n").split("\t", 1) for line in open(path, encoding="utf-8") if line.strip()]
    return [(text, label) for label, text in rows]


def bucketed(n, batch_size, rng, length):
    order = list(range(n))
    rng.shuffle(order)
    pool = batch_size * 20
    batches = []
    for k in range(0, n, pool):
        chunk = sorted(order[k:k + pool], key=length)
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def classify_train(args):
    """What `recur classify train` does, in PyTorch."""
    train, valid = read_tsv(args.train), read_tsv(args.valid)
    labels = sorted({l for _, l in train})
    label_id = {l: i for i, l in enumerate(labels)}
    chars = sorted({c for w, _ in train for c in w})
    vocab = {c: i + 2 for i, c in enumerate(chars)}  # 0 pads, 1 is unknown
    model = Model(len(vocab) + 2, len(labels))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = random.Random(args.seed)
    vids, vlen = batch([w for w, _ in valid], vocab)
    vy = torch.tensor([label_id[l] for _, l in valid])
    best = (float("inf"), 0.0)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for b in bucketed(len(train), args.batch, rng, lambda i: len(train[i][0])):
            ids, lengths = batch([train[i][0] for i in b], vocab)
            targets = torch.tensor([label_id[train[i][1]] for i in b])
            loss = nn.functional.cross_entropy(model(ids, lengths), targets)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(vids, vlen)
            val = nn.functional.cross_entropy(logits, vy).item()
            acc = (logits.argmax(1) == vy).float().mean().item()
        if val < best[0]:
            best = (val, acc)
    secs = time.perf_counter() - start
    print(f"{len(train)} training texts, {len(valid)} validation texts: best validation loss "
          f"{best[0]:.4f}, its accuracy {100 * best[1]:.2f} %, {secs:.1f} s on {args.threads} threads")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-tsv", metavar="DIR")
    ap.add_argument("--train")
    ap.add_argument("--valid")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    args = ap.parse_args()
    if args.write_tsv:
        write_tsv(args.write_tsv, args.seed)
        return
    torch.set_num_threads(args.threads)
    if args.train:
        torch.manual_seed(args.seed)
        classify_train(args)
        return
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train, test = [], []
    for lang, name in enumerate(LANGS):
        words = [w.lower() for w in open(f"/usr/share/dict/{name}", encoding="utf-8").read().split("\n")
                 if w and "'" not in w]
        rng.shuffle(words)
        train += [(w, lang) for w in words[:2400]]
        test += [(w, lang) for w in words[2400:3000]]
    chars = sorted({c for w, _ in train for c in w})
    vocab = {c: i + 2 for i, c in enumerate(chars)}  # 0 pads, 1 is unknown
    model = Model(len(vocab) + 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for _ in range(10):
        order = list(range(len(train)))
        rng.shuffle(order)
        pool = 64 * 20
        batches = []
        for k in range(0, len(order), pool):
            chunk = sorted(order[k:k + pool], key=lambda i: len(train[i][0]))
            batches += [chunk[j:j + 64] for j in range(0, len(chunk), 64)]
        rng.shuffle(batches)
        for b in batches:
            ids, lengths = batch([train[i][0] for i in b], vocab)
            targets = torch.tensor([train[i][1] for i in b])
            loss = nn.functional.cross_entropy(model(ids, lengths), targets)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    secs = time.perf_counter() - start
    with torch.no_grad():
        ids, lengths = batch([w for w, _ in test], vocab)
        pred = model(ids, lengths).argmax(1)
        acc = (pred == torch.tensor([l for _, l in test])).float().mean().item()
    print(f"{len(train)} training words, {len(test)} test words, 5 languages: test accuracy "
          f"{100 * acc:.1f} %, trained in {secs:.1f} s on {args.threads} threads")


if __name__ == "__main__":
    main()
