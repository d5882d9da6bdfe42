#!/usr/bin/python3
"""Trains coegate's real domain experts and writes them as GGUF (Q8_0) into models/.

Run by hand through scripts/train-experts.sh (which installs Debian's python3-torch,
python3-sentencepiece and python3-numpy); never part of the build, the tests or CI.

What it makes, from ../shared/corpora (math: GSM8K, code: CPython's standard library,
writing: Shakespeare), all deterministic for --seed on a given machine:
  1. one SentencePiece BPE vocabulary (byte fallback, ChatML's <|im_start|> and
     <|im_end|> as control tokens) learned on the three train splits;
  2. three Mixtral-style MoE experts (llama architecture with experts), math, code and
     writing, each trained on its own train split and stopped early on its dev split;
  3. a generalist: a smaller dense llama trained on all three domains;
  4. GGUF files with Q8_0 matrices, written by this script (the only GGUF writer used
     for them), the fidelity references (PyTorch's logits on the exported weights for a
     few dev texts), and the dev perplexity table (models/dev-ppl.json);
  5. with --fusion-router, only the fusion group's router: the generalist's first two
     layers fine-tuned, the three experts frozen, so that its logits complement the
     selected expert's (the loss taken on the fused distribution; models/README.md).

Evaluation protocol (coegate model nll uses the same): each JSONL row's text is
tokenized as coegate and llama.cpp tokenize a plain prompt (BOS, then the text with
SentencePiece's space prefix); the token sequence is cut into windows of --ctx tokens
that overlap by one, each window run from an empty cache, so every token but BOS is
predicted exactly once. Perplexity is exp(total NLL / predicted tokens).
"""
import argparse
import io
import json
import math
import os
import re
import struct
import sys
import time

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F

DOMAINS = ["math", "code", "writing"]

# Shapes. The experts: Mixtral-style (llama architecture, experts top-2); the
# generalist: a plain dense llama, smaller, whose final hidden state the fusion router
# of the next step reads. Sized for the 8 MB-a-file, 30 MB-in-all budget at Q8_0 and
# for training all four in under an hour on two cores.
SHAPES = {
    "expert": dict(n_layer=4, n_embd=256, n_head=4, n_head_kv=2, n_ff=320, n_expert=4, n_expert_used=2),
    "generalist": dict(n_layer=4, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_expert=0, n_expert_used=0),
    # The fusion router (--fusion-router): the generalist's first two layers, its token
    # embedding also serving as the output matrix (tied, no output.weight), fine-tuned so
    # that its logits complement the selected expert's. Half the generalist's depth keeps
    # a fused step cheap; the tie keeps the five files within 30 MB.
    "router": dict(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_expert=0, n_expert_used=0, tied=True),
}
VOCAB_SIZE = 4096
ROPE_BASE = 10000.0
EPS = 1e-5
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- data

def read_rows(corpora, domain, split):
    with open(os.path.join(corpora, f"{domain}.{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_vocab(corpora, seed):
    texts = [r["text"] for d in DOMAINS for r in read_rows(corpora, d, "train")]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=VOCAB_SIZE,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, split_digits=True, character_coverage=0.9995,
        control_symbols=["<|im_start|>", "<|im_end|>"], max_sentence_length=1 << 20, num_threads=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, seed_sentencepiece_size=1000000, shuffle_input_sentence=False,
        minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


class Vocab:
    def __init__(self, sp):
        self.sp = sp
        self.bos, self.eos = sp.bos_id(), sp.eos_id()
        self.im_start, self.im_end = sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>")

    def plain(self, text):
        """A plain prompt, as coegate and llama.cpp tokenize it: BOS, then the text."""
        return [self.bos] + self.sp.encode(text)

    def chat(self, user, assistant):
        """A ChatML exchange as the chat template renders it. Text after a control token
        is a fragment of its own that gets SentencePiece's space prefix, as in llama.cpp;
        the assistant's answer continues its 'assistant\\n' fragment, as when generated."""
        enc = self.sp.encode
        return ([self.bos, self.im_start] + enc("user\n" + user) + [self.im_end] + enc("\n") + [self.im_start] +
                enc("assistant\n" + assistant) + [self.im_end])


def chat_framing(domain, text):
    """(user, assistant) for a training row, or None when the row has no chat form."""
    if domain == "math":
        m = re.match(r"Question: (.*?)\nAnswer: (.*)\Z", text, re.S)
        return (m.group(1).strip(), m.group(2).strip()) if m else None
    if domain == "code":
        m = re.search(r"^(?:async\s+)?(def|class)\s+(\w+)", text, re.M)
        what = f"Write a Python {'function' if m.group(1) == 'def' else 'class'} named {m.group(2)}." if m else \
            "Write some Python code."
        return (what, text)
    m = re.match(r"([A-Z][A-Za-z' ]+):\n", text)
    return (f"Write a speech for {m.group(1).title()}." if m else "Write a passage of a play.", text)


def documents(vocab, rows, domain, rng):
    """Training token sequences of one epoch: each row as plain text or as a chat
    (chosen at random, half and half), closed by EOS."""
    out = []
    for r in rows:
        framed = chat_framing(domain, r["text"])
        if framed and rng.random() < 0.5:
            out.append(vocab.chat(*framed) + [vocab.eos])
        else:
            out.append(vocab.plain(r["text"]) + [vocab.eos])
    return out


class Stream:
    """Batches of random windows of ctx+1 tokens over the concatenated documents of
    shuffled epochs (each document once an epoch)."""

    def __init__(self, vocab, sources, ctx, batch, seed):
        self.vocab, self.sources, self.ctx, self.batch = vocab, sources, ctx, batch
        self.rng = np.random.default_rng(seed)
        self.buf = np.zeros(0, dtype=np.int64)
        self.epoch = 0

    def refill(self):
        docs = []
        for domain, rows in self.sources:
            docs += documents(self.vocab, rows, domain, self.rng)
        order = self.rng.permutation(len(docs))
        self.buf = np.concatenate([self.buf] + [np.asarray(docs[i], dtype=np.int64) for i in order])
        self.epoch += 1

    def next(self):
        need = self.batch * (self.ctx + 1)
        while len(self.buf) < need:
            self.refill()
        chunk, self.buf = self.buf[:need], self.buf[need:]
        x = torch.from_numpy(chunk.reshape(self.batch, self.ctx + 1))
        return x[:, :-1], x[:, 1:]


def windows(ids, ctx):
    """Windows of at most ctx tokens overlapping by one: every token but the first is
    predicted once."""
    out, start = [], 0
    while start < len(ids) - 1:
        out.append(ids[start:start + ctx])
        start += ctx - 1
    return out


# ---------------------------------------------------------------- model
# Written to compute what coegate's engine (experts/engine.c) and llama.cpp compute for
# the llama architecture: RMSNorm, RoPE on adjacent pairs, grouped-query attention,
# SwiGLU, and Mixtral's router: softmax over all experts, top-k, renormalized.

# When set, the input of every product with a Q8_0 matrix is rounded to Q8_0 first, as
# coegate's engine and llama.cpp do (per 32 values: codes round-half-even of x * 127/amax,
# the scale amax/127 as F16): the reference for the Q8_0 files themselves.
# ACT_NUDGE: a relative change of activations just before that rounding, + and - on
# alternate values (float noise, not a scale that the block's amax would cancel): the
# reference's own sensitivity to noise (see write_reference).
ACT_Q8 = False
ACT_NUDGE = 0.0


def act(x):
    if not ACT_Q8:
        return x
    b = x.reshape(-1, 32)
    if ACT_NUDGE:
        b = b * (1 + ACT_NUDGE * (1 - 2 * (torch.arange(32) % 2)))
    amax = b.abs().amax(-1, keepdim=True)
    q = torch.round(b * torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax)))
    return (q * (amax / 127.0).half().float()).reshape(x.shape)


def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope_tables(ctx, head_dim):
    inv = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(ctx, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def rope(x, cos, sin):
    # x: (B, H, T, D); pairs (x[2i], x[2i+1]) rotated by pos * base^(-2i/D)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Layer(torch.nn.Module):
    def __init__(self, s):
        super().__init__()
        E, H, KV, hd = s["n_embd"], s["n_head"], s["n_head_kv"], s["n_embd"] // s["n_head"]
        self.H, self.KV, self.hd = H, KV, hd
        self.attn_norm = torch.nn.Parameter(torch.ones(E))
        self.wq = torch.nn.Linear(E, H * hd, bias=False)
        self.wk = torch.nn.Linear(E, KV * hd, bias=False)
        self.wv = torch.nn.Linear(E, KV * hd, bias=False)
        self.wo = torch.nn.Linear(H * hd, E, bias=False)
        self.ffn_norm = torch.nn.Parameter(torch.ones(E))
        self.n_expert, self.k = s["n_expert"], s["n_expert_used"]
        ff = s["n_ff"]
        if self.n_expert:
            n = self.n_expert
            self.gate_inp = torch.nn.Linear(E, n, bias=False)
            self.gate = torch.nn.Parameter(torch.randn(n, ff, E) / math.sqrt(E))
            self.up = torch.nn.Parameter(torch.randn(n, ff, E) / math.sqrt(E))
            self.down = torch.nn.Parameter(torch.randn(n, E, ff) / math.sqrt(ff))
        else:
            self.w_gate = torch.nn.Linear(E, ff, bias=False)
            self.w_up = torch.nn.Linear(E, ff, bias=False)
            self.w_down = torch.nn.Linear(ff, E, bias=False)

    def forward(self, x, cos, sin):
        B, T, E = x.shape
        h = act(rms_norm(x, self.attn_norm))
        q = self.wq(h).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.wk(h).view(B, T, self.KV, self.hd).transpose(1, 2)
        v = self.wv(h).view(B, T, self.KV, self.hd).transpose(1, 2)
        q, k = rope(q, cos[:T], sin[:T]), rope(k, cos[:T], sin[:T])
        rep = self.H // self.KV
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        x = x + self.wo(act((att @ v).transpose(1, 2).reshape(B, T, -1)))
        h = rms_norm(x, self.ffn_norm)
        if not self.n_expert:
            hq = act(h)
            return x + self.w_down(act(F.silu(self.w_gate(hq)) * self.w_up(hq))), x.new_zeros(())
        flat = h.reshape(-1, E)  # the router's matrix is F32: its input is not rounded
        probs = self.gate_inp(flat).softmax(-1)
        w, idx = probs.topk(self.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e in range(self.n_expert):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            xe = act(flat[tok])
            ye = act(F.silu(xe @ self.gate[e].t()) * (xe @ self.up[e].t())) @ self.down[e].t()
            out.index_add_(0, tok, ye * w[tok, slot, None])
        # Switch-style load balancing: fraction routed times mean probability.
        frac = torch.zeros(self.n_expert).index_add_(0, idx.reshape(-1), torch.ones(idx.numel())) / idx.numel()
        aux = self.n_expert * (frac * probs.mean(0)).sum()
        return x + out.view(B, T, E), aux


class Model(torch.nn.Module):
    def __init__(self, s, n_vocab, ctx):
        super().__init__()
        self.s = s
        self.tok_embd = torch.nn.Embedding(n_vocab, s["n_embd"])
        torch.nn.init.normal_(self.tok_embd.weight, std=0.02 * math.sqrt(s["n_embd"]) / 4)
        self.layers = torch.nn.ModuleList(Layer(s) for _ in range(s["n_layer"]))
        self.output_norm = torch.nn.Parameter(torch.ones(s["n_embd"]))
        self.output = None if s.get("tied") else torch.nn.Linear(s["n_embd"], n_vocab, bias=False)
        cos, sin = rope_tables(ctx, s["n_embd"] // s["n_head"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens, hidden=False):
        x = self.tok_embd(tokens)
        aux = x.new_zeros(())
        for layer in self.layers:
            x, a = layer(x, self.cos, self.sin)
            aux = aux + a
        h = rms_norm(x, self.output_norm)
        return (self.head(h), aux) if not hidden else h

    def head(self, h):
        """Logits from the final hidden state."""
        return F.linear(act(h), self.tok_embd.weight if self.output is None else self.output.weight)


# ---------------------------------------------------------------- training

@torch.no_grad()
def nll(model, vocab, texts, ctx):
    """(total NLL in nats, predicted tokens) over texts, by the evaluation protocol."""
    model.eval()
    total, count = 0.0, 0
    for text in texts:
        for w in windows(vocab.plain(text), ctx):
            x = torch.tensor([w])
            logits, _ = model(x[:, :-1])
            lp = torch.log_softmax(logits.double(), -1)
            total -= lp[0].gather(-1, x[0, 1:, None]).sum().item()
            count += len(w) - 1
    model.train()
    return total, count


def lr_at(step, steps, warm, peak):
    """Linear warm-up over warm steps, then a cosine down to a tenth of peak."""
    if step <= warm:
        return peak * step / warm
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm))))


class Keeper:
    """Early stopping: keeps the weights of the best evaluation so far and says when
    patience evaluations in a row have not bettered it."""

    def __init__(self, model, patience):
        self.model, self.patience = model, patience
        self.best, self.step, self.bad, self.state = float("inf"), 0, 0, None

    def evaluated(self, value, step):
        """Records an evaluation; returns the mark to log (" *" for a new best)."""
        if value < self.best:
            self.best, self.step, self.bad = value, step, 0
            self.state = {k: v.clone() for k, v in self.model.state_dict().items()}
            return " *"
        self.bad += 1
        return ""

    def done(self):
        return self.bad >= self.patience

    def restore(self):
        self.model.load_state_dict(self.state)


def train(name, shape, vocab, sources, dev_texts, args, seed):
    torch.manual_seed(seed)
    model = Model(SHAPES[shape], VOCAB_SIZE, args.ctx)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    steps = args.steps[name]
    stream = Stream(vocab, sources, args.ctx, args.batch, seed)
    warm = min(100, steps // 10)
    keep = Keeper(model, args.patience)
    t0 = time.time()
    log(f"[{name}] {n_params / 1e6:.2f} M parameters, {steps} steps of {args.batch}x{args.ctx} tokens")
    for step in range(1, steps + 1):
        lr = lr_at(step, steps, warm, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = stream.next()
        logits, aux = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        (loss + 0.01 * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        el = time.time() - t0
        if step % args.eval_every == 0 or step == steps:
            tot, cnt = nll(model, vocab, dev_texts, args.ctx)
            ppl = math.exp(tot / cnt)
            mark = keep.evaluated(ppl, step)
            log(f"[{name}] step {step}/{steps} loss {loss.item():.3f} dev ppl {ppl:.2f}{mark} lr {lr:.2e} "
                f"epoch {stream.epoch} {el:.0f}s, ~{el / step * (steps - step):.0f}s left")
            if keep.done():
                log(f"[{name}] dev perplexity has not improved for {keep.bad} evaluations: stopping early")
                break
        elif step % 10 == 0:
            log(f"[{name}] step {step}/{steps} loss {loss.item():.3f} {el:.0f}s, ~{el / step * (steps - step):.0f}s left")
    keep.restore()
    return model, dict(params=n_params, best_step=keep.step, dev_ppl=keep.best, seconds=time.time() - t0)


# ---------------------------------------------------------------- GGUF (v3), Q8_0

GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STRING, GGUF_ARRAY = 4, 5, 6, 7, 8, 9
GGML_F32, GGML_Q8_0 = 0, 8


def q8_0(w):
    """ggml's Q8_0 of each row (rows of a multiple of 32): per block of 32, d = amax/127
    as F16 and codes round(x/d), half away from zero. Returns (bytes, dequantized)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    blocks = w.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    v = blocks * inv[:, None]
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    d16 = d.astype(np.float16)
    raw = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    raw[:, :2] = d16.view(np.uint8).reshape(-1, 2)
    raw[:, 2:] = q.view(np.uint8)
    deq = (q.astype(np.float32) * d16.astype(np.float32)[:, None]).reshape(w.shape)
    return raw.tobytes(), deq


class GGUFWriter:
    def __init__(self):
        self.kv, self.tensors = [], []

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def add(self, key, gtype, value):
        body = struct.pack("<I", gtype)
        if gtype == GGUF_STRING:
            body += self._str(value)
        elif gtype == GGUF_ARRAY:
            etype, items = value
            body += struct.pack("<IQ", etype, len(items))
            if etype == GGUF_STRING:
                body += b"".join(self._str(s) for s in items)
            else:
                body += np.asarray(items, dtype={GGUF_F32: "<f4", GGUF_I32: "<i4"}[etype]).tobytes()
        else:
            body += struct.pack({GGUF_U32: "<I", GGUF_F32: "<f", GGUF_BOOL: "<?"}[gtype], value)
        self.kv.append(self._str(key) + body)

    def tensor(self, name, gtype, dims, data):
        self.tensors.append((name, gtype, dims, data))

    def save(self, path):
        out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv)))
        for kv in self.kv:
            out += kv
        offset, blobs = 0, []
        for name, gtype, dims, data in self.tensors:
            out += self._str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            out += struct.pack("<IQ", gtype, offset)
            pad = (-len(data)) % 32
            blobs.append(data + b"\0" * pad)
            offset += len(data) + pad
        out += b"\0" * ((-len(out)) % 32)
        for b in blobs:
            out += b
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(out)
        os.replace(tmp, path)
        return len(out)


def tensor_names(s):
    """Every tensor of a model of shape s, in file order: (GGUF name, PyTorch state key,
    stored as Q8_0). Norms and the MoE router stay F32."""
    layer = [("attn_norm.weight", "attn_norm", False), ("attn_q.weight", "wq.weight", True),
             ("attn_k.weight", "wk.weight", True), ("attn_v.weight", "wv.weight", True),
             ("attn_output.weight", "wo.weight", True), ("ffn_norm.weight", "ffn_norm", False)]
    if s["n_expert"]:
        layer += [("ffn_gate_inp.weight", "gate_inp.weight", False), ("ffn_gate_exps.weight", "gate", True),
                  ("ffn_up_exps.weight", "up", True), ("ffn_down_exps.weight", "down", True)]
    else:
        layer += [("ffn_gate.weight", "w_gate.weight", True), ("ffn_up.weight", "w_up.weight", True),
                  ("ffn_down.weight", "w_down.weight", True)]
    names = [("token_embd.weight", "tok_embd.weight", True), ("output_norm.weight", "output_norm", False)]
    if not s.get("tied"):
        names.append(("output.weight", "output.weight", True))
    for i in range(s["n_layer"]):
        names += [(f"blk.{i}.{g}", f"layers.{i}.{k}", q) for g, k, q in layer]
    return names


def export(model, vocab, name, path, ctx, provenance):
    """Writes model as GGUF (matrices Q8_0, norms and the MoE router F32) and returns a
    copy of the model whose weights are exactly the file's (dequantized)."""
    s = model.s
    sp = vocab.sp
    w = GGUFWriter()
    w.add("general.architecture", GGUF_STRING, "llama")
    w.add("general.name", GGUF_STRING, f"coegate-{name}")
    w.add("general.description", GGUF_STRING, provenance)
    w.add("general.license", GGUF_STRING, {"math": "MIT (GSM8K)", "code": "PSF-2.0 (CPython)",
                                           "writing": "public domain (Shakespeare)"}.get(
        name, "MIT (GSM8K), PSF-2.0 (CPython), public domain (Shakespeare)"))
    w.add("general.file_type", GGUF_U32, 7)  # LLAMA_FTYPE_MOSTLY_Q8_0
    for k, v in [("context_length", ctx), ("embedding_length", s["n_embd"]), ("block_count", s["n_layer"]),
                 ("feed_forward_length", s["n_ff"]), ("attention.head_count", s["n_head"]),
                 ("attention.head_count_kv", s["n_head_kv"]), ("rope.dimension_count", s["n_embd"] // s["n_head"])]:
        w.add(f"llama.{k}", GGUF_U32, v)
    w.add("llama.rope.freq_base", GGUF_F32, ROPE_BASE)
    w.add("llama.attention.layer_norm_rms_epsilon", GGUF_F32, EPS)
    if s["n_expert"]:
        w.add("llama.expert_count", GGUF_U32, s["n_expert"])
        w.add("llama.expert_used_count", GGUF_U32, s["n_expert_used"])
    w.add("llama.vocab_size", GGUF_U32, sp.get_piece_size())
    n = sp.get_piece_size()
    types = [3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i) else
             5 if sp.is_unused(i) else 1 for i in range(n)]
    w.add("tokenizer.ggml.model", GGUF_STRING, "llama")
    w.add("tokenizer.ggml.pre", GGUF_STRING, "default")
    w.add("tokenizer.ggml.tokens", GGUF_ARRAY, (GGUF_STRING, [sp.id_to_piece(i) for i in range(n)]))
    w.add("tokenizer.ggml.scores", GGUF_ARRAY, (GGUF_F32, [sp.get_score(i) for i in range(n)]))
    w.add("tokenizer.ggml.token_type", GGUF_ARRAY, (GGUF_I32, types))
    w.add("tokenizer.ggml.bos_token_id", GGUF_U32, vocab.bos)
    w.add("tokenizer.ggml.eos_token_id", GGUF_U32, vocab.eos)
    w.add("tokenizer.ggml.unknown_token_id", GGUF_U32, sp.unk_id())
    w.add("tokenizer.ggml.eot_token_id", GGUF_U32, vocab.im_end)
    w.add("tokenizer.ggml.add_bos_token", GGUF_BOOL, True)
    w.add("tokenizer.ggml.add_eos_token", GGUF_BOOL, False)
    w.add("tokenizer.ggml.add_space_prefix", GGUF_BOOL, True)
    w.add("tokenizer.chat_template", GGUF_STRING, CHATML)

    exact = Model(s, n, ctx)
    state = {}
    weights = model.state_dict()
    for gname, key, quantized in tensor_names(s):
        arr = np.ascontiguousarray(weights[key].detach().float().numpy())
        if quantized:
            raw, deq = q8_0(arr)
            w.tensor(gname, GGML_Q8_0, list(reversed(arr.shape)), raw)
            state[key] = torch.from_numpy(deq)
        else:
            w.tensor(gname, GGML_F32, list(reversed(arr.shape)), arr.tobytes())
            state[key] = torch.from_numpy(arr.copy())
    exact.load_state_dict(state)
    exact.eval()
    return exact, w.save(path)


def write_reference(models, vocab, corpora, out_dir, n_tokens):
    """PyTorch's logits on the exported weights, at every position of the first two dev
    texts of each domain (their first n_tokens tokens), for the fidelity test
    (tests/conformance/test_experts_shared.c): all logits with plain F32 activations
    (NAME.logits.f32, texts x positions x vocabulary), and the 16 largest with
    activations rounded to Q8_0 as the engine rounds them for Q8_0 matrices (in
    reference.json). With that rounding, an activation within float noise of a code
    boundary rounds either way, and a single code step moves these models' logits by
    up to a few 1e-2; so two correct engines differ by up to the logits' sensitivity to
    such noise, measured here at every position as the largest change of a logit when
    every activation is nudged by 1e-5 (relative, the size of float differences between
    two engines after a few layers) before rounding, and stored beside ("q8_0_noise",
    per text and position: large where the nudge flips a MoE routing choice)."""
    global ACT_Q8, ACT_NUDGE
    texts = []
    for d in DOMAINS:
        for r in read_rows(corpora, d, "dev")[:2]:
            texts.append({"domain": d, "id": r["id"], "tokens": vocab.plain(r["text"])[:n_tokens]})
    meta = {"n_vocab": VOCAB_SIZE, "texts": texts, "models": {}}
    os.makedirs(out_dir, exist_ok=True)
    for name, model in models.items():
        rows, top, noise = [], [], []
        with torch.no_grad():
            for t in texts:
                ACT_Q8 = False
                logits, _ = model(torch.tensor([t["tokens"]]))
                rows.append(logits[0].numpy().astype("<f4"))
                ACT_Q8 = True
                logits, _ = model(torch.tensor([t["tokens"]]))
                ACT_NUDGE = 1e-5
                nudged, _ = model(torch.tensor([t["tokens"]]))
                ACT_Q8, ACT_NUDGE = False, 0.0
                noise.append([round(x, 6) for x in (logits - nudged).abs().amax(-1)[0].tolist()])
                val, idx = logits[0].topk(16, dim=-1)
                top.append([[[int(i), float(v)] for i, v in zip(ii, vv)] for ii, vv in zip(idx.tolist(), val.tolist())])
        path = os.path.join(out_dir, f"{name}.logits.f32")
        np.concatenate(rows).tofile(path)
        meta["models"][name] = {"gguf": f"{name}.gguf", "logits": f"reference/{name}.logits.f32", "q8_0_top16": top,
                               "q8_0_noise": noise}
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(meta, f)
        f.write("\n")


def read_gguf(path):
    """The tensors of a GGUF file this script wrote, dequantized: {name: float32 array}."""
    with open(path, "rb") as f:
        buf = f.read()
    off = 24
    magic, version, n_t, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    assert magic == b"GGUF" and version == 3, path

    def string():
        nonlocal off
        n = struct.unpack_from("<Q", buf, off)[0]
        off += 8 + n
        return buf[off - n:off].decode("utf-8")

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(t):
        nonlocal off
        if t == GGUF_STRING:
            string()
        elif t == GGUF_ARRAY:
            et, n = struct.unpack_from("<IQ", buf, off)
            off += 12
            for _ in range(n) if et in (GGUF_STRING, GGUF_ARRAY) else ():
                skip(et)
            if et not in (GGUF_STRING, GGUF_ARRAY):
                off += sizes[et] * n
        else:
            off += sizes[t]

    tokens = None
    for _ in range(n_kv):
        key = string()
        t = struct.unpack_from("<I", buf, off)[0]
        off += 4
        if key == "tokenizer.ggml.tokens":
            n = struct.unpack_from("<IQ", buf, off)[1]
            off += 12
            tokens = [string() for _ in range(n)]
        else:
            skip(t)
    infos = []
    for _ in range(n_t):
        name = string()
        nd = struct.unpack_from("<I", buf, off)[0]
        dims = struct.unpack_from(f"<{nd}Q", buf, off + 4)
        gtype, toff = struct.unpack_from("<IQ", buf, off + 4 + 8 * nd)
        off += 4 + 8 * nd + 12
        infos.append((name, dims, gtype, toff))
    base = off + (-off) % 32
    out = {}
    for name, dims, gtype, toff in infos:
        n = int(np.prod(dims))
        shape = tuple(reversed(dims))
        if gtype == GGML_F32:
            out[name] = np.frombuffer(buf, dtype="<f4", count=n, offset=base + toff).reshape(shape).copy()
        else:
            raw = np.frombuffer(buf, dtype=np.uint8, count=n // 32 * 34, offset=base + toff).reshape(-1, 34)
            d = raw[:, :2].copy().view(np.float16).astype(np.float32)
            q = raw[:, 2:].copy().view(np.int8).astype(np.float32)
            out[name] = (q * d).reshape(shape)
    return out, tokens


def model_from_gguf(path, shape, ctx, vocab):
    """A PyTorch model holding exactly the weights of a GGUF file of export(), whose
    vocabulary must be vocab's."""
    t, tokens = read_gguf(path)
    if tokens != [vocab.sp.id_to_piece(i) for i in range(vocab.sp.get_piece_size())]:
        sys.exit(f"{path}: its vocabulary is not the one this script learns: retrain the models")
    m = Model(SHAPES[shape], VOCAB_SIZE, ctx)
    st = {key: t[gname] for gname, key, _ in tensor_names(SHAPES[shape])}
    m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in st.items()})
    m.eval()
    return m


# ---------------------------------------------------------------- fusion router

class MixedStream(Stream):
    """Batches of random windows over documents made of one to three parts, each the
    head of a random row of a random domain (at most 900 characters, cut at a line
    end), joined by a blank line and tokenized as a plain prompt: text that changes
    domain, as the fusion groups are meant for."""

    def __init__(self, vocab, rows, ctx, batch, seed, docs_per_refill=200):
        super().__init__(vocab, None, ctx, batch, seed)
        self.rows, self.docs_per_refill = rows, docs_per_refill

    def refill(self):
        docs = []
        for _ in range(self.docs_per_refill):
            parts = []
            for _ in range(int(self.rng.integers(1, 4))):
                rows = self.rows[DOMAINS[int(self.rng.integers(len(DOMAINS)))]]
                text = rows[int(self.rng.integers(len(rows)))]["text"]
                cut = text.rfind("\n", 0, 900) if len(text) > 900 else len(text)
                parts.append(text[:cut if cut > 450 else 900])
            docs.append(np.asarray(self.vocab.plain("\n\n".join(parts)), dtype=np.int64))
        self.buf = np.concatenate([self.buf] + docs)
        self.epoch += 1


def fused_losses(router, selector, experts, x, y, lam):
    """(NLL of the fused distribution, the selector's cross-entropy against the oracle
    expert, NLL of the selected expert alone), means over the batch's positions. The
    expert is the selector's argmax, as coegate picks it; the fused logits are the
    expert's plus lam times the router's (FusionRoute)."""
    with torch.no_grad():
        ze = torch.stack([experts[d](x)[0] for d in DOMAINS], 2)  # (B, T, experts, V)
        lpe = ze.log_softmax(-1)
        oracle = lpe.gather(-1, y[:, :, None, None].expand(-1, -1, len(DOMAINS), 1)).squeeze(-1).argmax(-1)
    h = router(x, hidden=True)
    sel = selector(h)
    pick = sel.argmax(-1)
    idx = pick[:, :, None, None].expand(-1, -1, 1, ze.shape[-1])
    z = ze.gather(2, idx).squeeze(2)
    V = z.shape[-1]
    fused = F.cross_entropy((z + lam * router.head(h)).reshape(-1, V), y.reshape(-1))
    alone = F.nll_loss(lpe.gather(2, idx).squeeze(2).reshape(-1, V), y.reshape(-1))
    return fused, F.cross_entropy(sel.reshape(-1, len(DOMAINS)), oracle.reshape(-1)), alone


def train_fusion_router(vocab, train_rows, args):
    """Fine-tunes the fusion router from the generalist with the experts frozen: the
    loss is the fused distribution's NLL plus the selector's cross-entropy against the
    oracle expert (a linear selector trained along, then dropped: `coegate fusion train`
    fits the served one on the router's final hidden state). Early stopping on the last
    --router-holdout of every train split; the dev splits are not read."""
    seed = args.seed * 100 + 4
    experts = {d: model_from_gguf(os.path.join(args.out, f"{d}.gguf"), "expert", args.ctx, vocab) for d in DOMAINS}
    for m in experts.values():
        m.requires_grad_(False)
    gen = model_from_gguf(os.path.join(args.out, "generalist.gguf"), "generalist", args.ctx, vocab).state_dict()
    torch.manual_seed(seed)
    router = Model(SHAPES["router"], VOCAB_SIZE, args.ctx)
    router.load_state_dict({k: gen[k] for k in router.state_dict()})
    router.train()
    selector = torch.nn.Linear(SHAPES["router"]["n_embd"], len(DOMAINS))
    fit, held = {}, {}
    for d in DOMAINS:
        cut = len(train_rows[d]) - max(1, int(len(train_rows[d]) * args.router_holdout))
        fit[d], held[d] = train_rows[d][:cut], train_rows[d][cut:]
    stream = MixedStream(vocab, fit, args.ctx, args.batch, seed)
    hs = MixedStream(vocab, held, args.ctx, args.batch, seed + 1)
    held_batches = [hs.next() for _ in range(args.router_eval_batches)]
    params = list(router.parameters()) + list(selector.parameters())
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.router_lr, betas=(0.9, 0.95))
    steps, lam = args.router_steps, args.router_lambda
    warm = min(50, steps // 10)

    @torch.no_grad()
    def held_out():
        router.eval()
        f = a = 0.0
        for x, y in held_batches:
            lf, _, la = fused_losses(router, selector, experts, x, y, lam)
            f, a = f + lf.item(), a + la.item()
        router.train()
        return math.exp(f / len(held_batches)), math.exp(a / len(held_batches))

    keep = Keeper(router, args.patience)
    t0 = time.time()
    fp, sp = held_out()
    log(f"[fusion-router] {sum(p.numel() for p in router.parameters()) / 1e6:.2f} M parameters from the generalist; "
        f"held-out perplexity before: fused {fp:.2f}, selected expert alone {sp:.2f}")
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warm, args.router_lr)
        x, y = stream.next()
        lf, ls, _ = fused_losses(router, selector, experts, x, y, lam)
        (lf + ls).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        el = time.time() - t0
        if step % args.eval_every == 0 or step == steps:
            fp, sp = held_out()
            mark = keep.evaluated(fp, step)
            log(f"[fusion-router] step {step}/{steps} fused loss {lf.item():.3f} selector loss {ls.item():.3f} "
                f"held-out perplexity fused {fp:.2f}{mark} selected alone {sp:.2f} {el:.0f}s")
            if keep.done():
                log(f"[fusion-router] held-out perplexity has not improved for {keep.bad} evaluations: stopping early")
                break
        elif step % 10 == 0:
            log(f"[fusion-router] step {step}/{steps} fused loss {lf.item():.3f} selector loss {ls.item():.3f} "
                f"{el:.0f}s, ~{el / step * (steps - step):.0f}s left")
    keep.restore()
    prov = (f"coegate fusion router, the first {SHAPES['router']['n_layer']} layers of generalist.gguf fine-tuned by "
            f"scripts/train_experts.py --fusion-router --seed {args.seed} with math, code and writing frozen "
            f"(loss on the fused distribution, lambda {lam}) on mixed documents from the train splits of "
            f"../shared/corpora; best held-out perplexity {keep.best:.2f} at step {keep.step}")
    _, size = export(router, vocab, "fusion-router", os.path.join(args.out, "fusion-router.gguf"), args.ctx, prov)
    log(f"[fusion-router] wrote {args.out}/fusion-router.gguf ({size / 1e6:.2f} MB), best step {keep.step}, "
        f"{time.time() - t0:.0f}s")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="../shared/corpora")
    ap.add_argument("--out", default="models")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256, help="training and evaluation window (tokens)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--expert-steps", type=int, default=450)
    ap.add_argument("--generalist-steps", type=int, default=450)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-rows", type=int, default=24, help="dev rows per domain for early stopping")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--ppl-rows", type=int, default=0, help="dev rows per domain in the final table (0: all)")
    ap.add_argument("--only", default="", help="comma-separated models to train (default all)")
    ap.add_argument("--reference-only", action="store_true",
                    help="only rewrite OUT/reference from the GGUF files already in OUT")
    ap.add_argument("--probe", type=int, default=0, help="time this many steps of each shape and exit")
    ap.add_argument("--fusion-router", action="store_true",
                    help="only train OUT/fusion-router.gguf from the experts and the generalist already in OUT")
    ap.add_argument("--router-steps", type=int, default=600)
    ap.add_argument("--router-lr", type=float, default=2e-3)
    ap.add_argument("--router-lambda", type=float, default=1.0, help="the router's weight in the fused logits")
    ap.add_argument("--router-holdout", type=float, default=0.05, help="tail of each train split for early stopping")
    ap.add_argument("--router-eval-batches", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.steps = {d: args.expert_steps for d in DOMAINS}
    args.steps["generalist"] = args.generalist_steps
    t_start = time.time()
    corpora = args.corpora
    os.makedirs(args.out, exist_ok=True)

    log("vocabulary: SentencePiece BPE on the three train splits")
    vocab = Vocab(train_vocab(corpora, args.seed))
    train_rows = {d: read_rows(corpora, d, "train") for d in DOMAINS}
    dev_rows = {d: read_rows(corpora, d, "dev") for d in DOMAINS}

    if args.reference_only:
        models = {}
        for name in DOMAINS + ["generalist"]:
            path = os.path.join(args.out, f"{name}.gguf")
            models[name] = model_from_gguf(path, "generalist" if name == "generalist" else "expert", args.ctx,
                                           vocab)
        write_reference(models, vocab, corpora, os.path.join(args.out, "reference"), 24)
        log(f"wrote {args.out}/reference ({time.time() - t_start:.0f}s)")
        return

    if args.fusion_router:
        train_fusion_router(vocab, train_rows, args)
        log(f"total {(time.time() - t_start) / 60:.1f} minutes")
        return

    if args.probe:
        for shape in SHAPES:
            torch.manual_seed(0)
            m = Model(SHAPES[shape], VOCAB_SIZE, args.ctx)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
            st = Stream(vocab, [("math", train_rows["math"])], args.ctx, args.batch, 0)
            t = time.time()
            for _ in range(args.probe):
                x, y = st.next()
                lo, aux = m(x)
                (F.cross_entropy(lo.reshape(-1, VOCAB_SIZE), y.reshape(-1)) + 0.01 * aux).backward()
                opt.step()
                opt.zero_grad()
            dt = (time.time() - t) / args.probe
            log(f"{shape}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M params, {dt:.3f} s/step, "
                f"{args.batch * args.ctx / dt:.0f} tokens/s")
        return

    names = [n for n in DOMAINS + ["generalist"] if not args.only or n in args.only.split(",")]
    models, info = {}, {}
    for name in names:
        if name == "generalist":
            sources = [(d, train_rows[d]) for d in DOMAINS]
            dev = [r["text"] for d in DOMAINS for r in dev_rows[d][:args.eval_rows // 3 + 1]]
        else:
            sources = [(name, train_rows[name])]
            dev = [r["text"] for r in dev_rows[name][:args.eval_rows]]
        # Seeded by the model's place in the full list, so --only trains the same model.
        model, info[name] = train(name, "generalist" if name == "generalist" else "expert", vocab, sources, dev, args,
                                  args.seed * 100 + (DOMAINS + ["generalist"]).index(name))
        shape = SHAPES["generalist" if name == "generalist" else "expert"]
        prov = (f"coegate domain model '{name}', trained by scripts/train_experts.py --seed {args.seed} on "
                f"{'all three' if name == 'generalist' else 'the ' + name} train split(s) of ../shared/corpora; "
                f"best dev perplexity at step {info[name]['best_step']}")
        exact, size = export(model, vocab, name, os.path.join(args.out, f"{name}.gguf"), args.ctx, prov)
        info[name].update(bytes=size, shape=shape)
        models[name] = exact
        log(f"[{name}] wrote {args.out}/{name}.gguf ({size / 1e6:.2f} MB)")

    write_reference(models, vocab, corpora, os.path.join(args.out, "reference"), 24)

    log("dev perplexity of the exported (Q8_0) weights, whole dev splits, windows of "
        f"{args.ctx} tokens")
    table = {}
    for name, model in models.items():
        table[name] = {}
        for d in DOMAINS:
            rows = dev_rows[d][:args.ppl_rows] if args.ppl_rows else dev_rows[d]
            tot, cnt = nll(model, vocab, [r["text"] for r in rows], args.ctx)
            table[name][d] = {"nll": tot / cnt, "ppl": math.exp(tot / cnt), "tokens": cnt}
    header = "| model | " + " | ".join(DOMAINS) + " |"
    lines = [header, "|---" * (len(DOMAINS) + 1) + "|"]
    for name in models:
        lines.append(f"| {name} | " + " | ".join(f"{table[name][d]['ppl']:.2f}" for d in DOMAINS) + " |")
    log("\n".join(lines))
    elapsed = time.time() - t_start
    summary = {"seed": args.seed, "ctx": args.ctx, "ppl_rows": args.ppl_rows, "threads": args.threads, "seconds": round(elapsed),
               "command": "scripts/train-experts.sh " + " ".join(sys.argv[1:]), "models": {}}
    for name in models:
        summary["models"][name] = {k: v for k, v in info[name].items()}
        summary["models"][name]["dev"] = table[name]
    with open(os.path.join(args.out, "dev-ppl.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    log("| model | parameters | best step | training s | file MB |\n|---|---|---|---|---|")
    for name in models:
        i = info[name]
        log(f"| {name} | {i['params'] / 1e6:.2f} M | {i['best_step']} | {i['seconds']:.0f} | {i['bytes'] / 1e6:.2f} |")
    log(f"total {elapsed / 60:.1f} minutes")


if __name__ == "__main__":
    main()
