#!/usr/bin/env python3
"""The PyTorch twin of `recur train`: the same character model, data layout and schedule.

An embedding -> LSTM stack -> linear head over the characters, trained with truncated
backpropagation through time as `recur train` does it: the text's last --val-fraction held
out, the rest cut into --batch contiguous streams read --seq-len steps at a time with the
hidden state carried from chunk to chunk (detached) and reset at each epoch's start, Adam,
gradient norm clipped at --clip, a validation every --eval-every steps over at most 64 chunks
of the held-out text from a zero state (batch min(B, len // (T + 1))). Prints the validation
loss at each validation and the characters per second of the training steps (validation
excluded) and of the whole run.

With --precision bf16 the training steps' forward runs under
`torch.autocast("cpu", dtype=torch.bfloat16)` (PyTorch's mixed precision: the products in
bf16, the weights, the optimizer and the loss in f32), the twin of `recur train --precision
bf16`; validation stays in f32 on both sides.

With --save-init FILE it writes its initial weights first; `recur train --init-weights FILE`
then starts from the same weights, so that the two validation losses compare at equal steps
without the spread that different initial weights give.

Usage, side by side with `recur train` on the same text:

    cat /usr/share/common-licenses/* > /tmp/text.txt
    recur train --text /tmp/text.txt --steps 1000 --clip 5 --threads 2 --out /tmp/run --json
    /tmp/tv/bin/python bench/charlm_torch.py --text /tmp/text.txt --steps 1000 --clip 5 --threads 2
"""

import argparse
import math
import time

import torch
from torch import nn


class CharLm(nn.Module):
    def __init__(self, vocab, embed, hidden, layers, cell):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn(embed, hidden, layers)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        y, state = self.rnn(self.embed(x), state)
        return self.head(y), state


def streams(ids, batch, seq_len):
    """[batch, stream_len] contiguous streams, and the number of chunks."""
    n = len(ids) // batch
    assert n > seq_len, "the text is too short for these streams"
    s = torch.tensor(ids[: n * batch]).view(batch, n)
    return s, (n - 1) // seq_len


def chunk(s, k, seq_len):
    x = s[:, k * seq_len: k * seq_len + seq_len].t().contiguous()
    y = s[:, k * seq_len + 1: k * seq_len + seq_len + 1].t().contiguous()
    return x, y


def detach(state):
    return tuple(t.detach() for t in state) if isinstance(state, tuple) else state.detach()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: the training steps' forward under torch.autocast (CPU, bf16)")
    ap.add_argument("--save-init", metavar="FILE",
                    help="write the initial weights to FILE (safetensors, the state_dict's "
                         "names) for `recur train --init-weights FILE`, then train as usual")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start_all = time.perf_counter()

    text = open(args.text, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in text]
    n_val = round(len(ids) * args.val_fraction)
    train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    T, B = args.seq_len, args.batch
    train, chunks = streams(train_ids, B, T)
    val_b = max(1, min(B, len(val_ids) // (T + 1)))
    val, val_chunks = streams(val_ids, val_b, T)
    val_chunks = min(val_chunks, 64)

    model = CharLm(len(chars), args.embed, args.hidden, args.layers, args.cell)
    if args.save_init:
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, args.save_init)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    state, train_secs = None, 0.0
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        k = (step - 1) % chunks
        if k == 0:
            state = None
        x, y = chunk(train, k, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits, state = model(x, state)
            loss = nn.functional.cross_entropy(logits.view(-1, len(chars)).float(), y.view(-1))
        state = detach(state)
        opt.zero_grad()
        loss.backward()
        if args.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        train_secs += time.perf_counter() - t0
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                vstate, total = None, 0.0
                for j in range(val_chunks):
                    vx, vy = chunk(val, j, T)
                    vl, vstate = model(vx, vstate)
                    total += nn.functional.cross_entropy(vl.view(-1, len(chars)), vy.view(-1)).item()
            val_loss = total / val_chunks
            print(f"step {step:6d}  train {loss.item():.4f}  val {val_loss:.4f} nats = "
                  f"{val_loss / math.log(2):.3f} bpc  {T * B * step / train_secs:.0f} char/s")
    wall = time.perf_counter() - start_all
    print(f"done: {args.steps} steps, {T * B * args.steps / train_secs:.0f} characters per second "
          f"in the training steps, {T * B * args.steps / wall:.0f} over the whole run ({wall:.1f} s), "
          f"{args.threads} threads, {args.precision}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
