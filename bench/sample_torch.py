"""Character generation in PyTorch, one character at a time with the state carried: the twin of
`recur sample` for a character model (embedding 64, 2 x 256 LSTM, linear head), for timing.

    /tmp/tv/bin/python bench/sample_torch.py --vocab 97 --length 20000 --threads 1

Prints `chars_per_sec=...` (median of --rounds runs). The weights are random: generation speed
does not depend on them.
"""

import argparse
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=97)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--length", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    embed = torch.nn.Embedding(a.vocab, a.embed)
    lstm = torch.nn.LSTM(a.embed, a.hidden, a.layers)
    head = torch.nn.Linear(a.hidden, a.vocab)
    rates = []
    with torch.inference_mode():
        for _ in range(a.rounds):
            g = torch.Generator().manual_seed(1)
            x = torch.zeros(1, 1, dtype=torch.long)
            state = None
            t0 = time.perf_counter()
            for _ in range(a.length):
                y, state = lstm(embed(x), state)
                probs = torch.softmax(head(y[0, 0]), dim=-1)
                x = torch.multinomial(probs, 1, generator=g).view(1, 1)
            rates.append(a.length / (time.perf_counter() - t0))
    print(f"chars_per_sec={statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
