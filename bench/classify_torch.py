#!/usr/bin/env python3
"""The PyTorch twin of examples/classify.rs, to compare accuracy and training time.

The language of a word from Debian's word lists (american-english, french, ngerman, italian,
spanish under /usr/share/dict): 2,400 training and 600 test words per language, characters
embedded in 32 dimensions -> GRU(32, 128) -> Linear(128, 5) on each word's last real state
(pack_padded_sequence, enforce_sorted=False), Adam (lr 3e-3), gradient norm clipped at 1.0,
batches of 64 bucketed by length in pools of 20 batches, 10 epochs. The words are drawn with
Python's generator, so they differ from the example's; the task and sizes are the same.

Usage: /tmp/tv/bin/python bench/classify_torch.py [--threads 2] [--seed 0]
"""

import argparse
import random
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

LANGS = ["american-english", "french", "ngerman", "italian", "spanish"]


class Model(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.GRU(32, 128)
        self.head = nn.Linear(128, len(LANGS))

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
