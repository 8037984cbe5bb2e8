"""A small Llama-style byte-level decoder super-network, its training data and its training loop.

The model has the parameter names and the arithmetic of Hugging Face's ``LlamaForCausalLM`` (RMSNorm,
rotary embeddings with ``rotate_half``, SwiGLU MLP, causal attention, no biases), so its trained weights
load into that class for export. A forward pass can run any sub-network with shared weights
(:class:`SubNet`): the layers kept, and per layer the first ``heads`` attention heads and the first
``mlp`` MLP neurons (prefix slices, as weight-shared super-networks are trained).

Training follows InstaTune / the sandwich rule: every step runs the full network, the smallest one and
``RANDOM_PER_STEP`` random sub-networks on the same batch and sums their gradients. The baseline trains
the full network alone for the same number of steps.

Data: the bytes of Python standard-library sources. A file goes to the held-out set when a hash of its
relative path falls in the held-out bucket; the held-out files are split again into validation (used by
the search) and test (used for the report) files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONFIG",
    "Corpus",
    "LlamaConfig",
    "SubNet",
    "build_model",
    "hf_config",
    "load_corpus",
    "sample_subnet",
    "smallest_subnet",
    "train",
]

VOCAB = 256  # bytes


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    layers: int = 6
    hidden: int = 128
    heads: int = 4
    mlp: int = 384
    context: int = 128
    rope_theta: float = 10000.0
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


CONFIG = LlamaConfig()


@dataclasses.dataclass(frozen=True)
class SubNet:
    """Layers kept (indices) and, per layer of the full network, heads and MLP neurons kept."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    mlp: tuple[int, ...]

    @classmethod
    def full(cls, config: LlamaConfig) -> SubNet:
        return cls(tuple(range(config.layers)), (config.heads,) * config.layers, (config.mlp,) * config.layers)

    def label(self) -> str:
        return " ".join(f"L{i}:h{self.heads[i]}/m{self.mlp[i]}" for i in self.layers)


MLP_CHOICES = tuple(CONFIG.mlp * q // 4 for q in (1, 2, 3, 4))  # quarters of the full width
MIN_LAYERS = 2


def sample_subnet(rng: np.random.Generator, config: LlamaConfig) -> SubNet:
    """Uniform heads and MLP width per layer; each layer kept with probability 3/4 (at least ``MIN_LAYERS``)."""
    keep = rng.random(config.layers) < 0.75
    while keep.sum() < MIN_LAYERS:
        keep[rng.integers(config.layers)] = True
    heads = tuple(int(h) for h in rng.integers(1, config.heads + 1, config.layers))
    mlp = tuple(int(MLP_CHOICES[i]) for i in rng.integers(0, len(MLP_CHOICES), config.layers))
    return SubNet(tuple(int(i) for i in np.flatnonzero(keep)), heads, mlp)


def smallest_subnet(rng: np.random.Generator, config: LlamaConfig) -> SubNet:
    """``MIN_LAYERS`` random layers with one head and the narrowest MLP each."""
    layers = tuple(sorted(int(i) for i in rng.choice(config.layers, MIN_LAYERS, replace=False)))
    return SubNet(layers, (1,) * config.layers, (MLP_CHOICES[0],) * config.layers)


def build_model(config: LlamaConfig = CONFIG, seed: int = 0) -> Any:
    """The super-network (a ``torch.nn.Module``; ``forward(ids, subnet=None) -> logits``)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class RMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(config.hidden))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.eps))

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h = config.hidden
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(h, h, bias=False) for _ in range(4))

        def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
            b, t, _ = x.shape
            width = heads * config.head_dim

            def project(linear: nn.Linear) -> torch.Tensor:
                y = F.linear(x, linear.weight[:width])
                return y.view(b, t, heads, config.head_dim).transpose(1, 2)

            q, k, v = project(self.q_proj), project(self.k_proj), project(self.v_proj)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return F.linear(y.transpose(1, 2).reshape(b, t, width), self.o_proj.weight[:, :width])

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj = nn.Linear(config.hidden, config.mlp, bias=False)
            self.up_proj = nn.Linear(config.hidden, config.mlp, bias=False)
            self.down_proj = nn.Linear(config.mlp, config.hidden, bias=False)

        def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:
            gate = F.linear(x, self.gate_proj.weight[:width])
            up = F.linear(x, self.up_proj.weight[:width])
            return F.linear(F.silu(gate) * up, self.down_proj.weight[:, :width])

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn, self.mlp = Attention(), Mlp()
            self.input_layernorm, self.post_attention_layernorm = RMSNorm(), RMSNorm()

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(VOCAB, config.hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(config.layers))
            self.norm = RMSNorm()

    class Supernet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Inner()
            self.lm_head = nn.Linear(config.hidden, VOCAB, bias=False)
            inv = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim)
            freqs = torch.outer(torch.arange(config.context).float(), inv)
            angles = torch.cat([freqs, freqs], dim=-1)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

        def forward(self, ids: torch.Tensor, subnet: SubNet | None = None) -> torch.Tensor:
            net = subnet or SubNet.full(config)
            t = ids.shape[1]
            rope: Any = self.get_buffer("cos"), self.get_buffer("sin")
            cos, sin = rope[0][:t], rope[1][:t]
            x = self.model.embed_tokens(ids)
            for i in net.layers:
                layer: Any = self.model.layers[i]
                x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, net.heads[i])
                x = x + layer.mlp(layer.post_attention_layernorm(x), net.mlp[i])
            return self.lm_head(self.model.norm(x))

    torch.manual_seed(seed)
    model = Supernet()
    for name, p in model.named_parameters():
        if p.ndim == 2:
            nn.init.normal_(p, std=0.02 / (math.sqrt(2 * config.layers) if name.endswith(("o_proj.weight",
                                                                                               "down_proj.weight"))
                                            else 1.0))
    return model


def _rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def hf_config(config: LlamaConfig = CONFIG) -> dict[str, Any]:
    """The ``transformers.LlamaConfig`` settings of the same network."""
    return dict(vocab_size=VOCAB, hidden_size=config.hidden, intermediate_size=config.mlp,
                num_hidden_layers=config.layers, num_attention_heads=config.heads,
                num_key_value_heads=config.heads, max_position_embeddings=config.context,
                rms_norm_eps=config.eps, rope_theta=config.rope_theta, tie_word_embeddings=False,
                hidden_act="silu", attention_bias=False, mlp_bias=False, bos_token_id=None, eos_token_id=None,
                pad_token_id=None)


# ---------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class Corpus:
    train: np.ndarray  # uint8 bytes of the training files, concatenated (files separated by b"\n\n")
    validation: np.ndarray
    test: np.ndarray
    files: dict[str, int]  # file counts per split

    def windows(self, split: str, count: int, length: int) -> np.ndarray:
        """``count`` evenly spaced, non-overlapping windows of ``length`` bytes (int64), deterministic."""
        data = getattr(self, split)
        starts = np.linspace(0, len(data) - length - 1, count).astype(np.int64)
        if count > 1 and starts[1] - starts[0] < length:
            raise ValueError(f"{split}: {len(data)} bytes hold fewer than {count} windows of {length}")
        return np.stack([data[s:s + length] for s in starts]).astype(np.int64)


def _bucket(relative: str) -> int:
    return int(hashlib.sha256(relative.encode()).hexdigest()[:8], 16) % 20


def load_corpus() -> Corpus:
    """Standard-library sources split by file: bucket 0 -> test, bucket 1 -> validation, rest -> train."""
    import sysconfig

    from graphopt.data import _stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    parts: dict[str, list[bytes]] = {"train": [], "validation": [], "test": []}
    for path in _stdlib_files():
        bucket = _bucket(path.relative_to(root).as_posix())
        split = "test" if bucket == 0 else "validation" if bucket == 1 else "train"
        parts[split].append(path.read_bytes())
    arrays = {k: np.frombuffer(b"\n\n".join(v), dtype=np.uint8) for k, v in parts.items()}
    return Corpus(arrays["train"], arrays["validation"], arrays["test"], {k: len(v) for k, v in parts.items()})


# ---------------------------------------------------------------------------------------------
# Training


RANDOM_PER_STEP = 2


def train(model: Any, corpus: Corpus, *, steps: int, batch: int = 16, lr: float = 2e-3, warmup: int = 100,
          supernet: bool = True, seed: int = 0, log: Callable[[str], None] = print,
          log_every: int = 50) -> dict[str, Any]:
    """Train ``model`` in place with AdamW and a cosine schedule; with ``supernet`` every step adds the
    losses of the smallest and ``RANDOM_PER_STEP`` random sub-networks to the full network's (sandwich rule).
    Returns the loss curve of the full network and the time taken."""
    import torch
    from torch.nn import functional as F

    config: LlamaConfig = CONFIG
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    data = torch.from_numpy(corpus.train.astype(np.int64))
    curve: list[tuple[int, float]] = []
    started = time.perf_counter()
    running = 0.0
    model.train()
    for step in range(steps):
        starts = torch.from_numpy(rng.integers(0, len(data) - config.context - 1, batch))
        window = torch.stack([data[s:s + config.context + 1] for s in starts.tolist()])
        x, y = window[:, :-1], window[:, 1:]
        nets: list[SubNet | None] = [None]
        if supernet:
            nets += [smallest_subnet(rng, config)] + [sample_subnet(rng, config) for _ in range(RANDOM_PER_STEP)]
        opt.zero_grad(set_to_none=True)
        full_loss = 0.0
        for k, net in enumerate(nets):
            loss = F.cross_entropy(model(x, net).reshape(-1, VOCAB), y.reshape(-1))
            loss.backward()
            if k == 0:
                full_loss = float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += full_loss
        if (step + 1) % log_every == 0:
            curve.append((step + 1, running / log_every))
            log(f"step {step + 1}/{steps}: full-network loss {running / log_every:.3f} "
                f"({time.perf_counter() - started:.0f} s)")
            running = 0.0
    model.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "supernet": supernet, "curve": curve,
            "seconds": round(time.perf_counter() - started, 1)}


def save_hf(model: Any, folder: Path, info: dict[str, Any]) -> None:
    """Write the trained weights as a Hugging Face ``LlamaForCausalLM`` folder (plus ``train.json``)."""
    import transformers

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config()))
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise RuntimeError(f"weights do not match LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(folder)
    (folder / "train.json").write_text(json.dumps(info, indent=1), encoding="utf-8")


def load_trained(folder: Path) -> Any:
    """The super-network with the weights saved by :func:`save_hf`."""
    import torch
    from safetensors.torch import load_file

    model = build_model()
    state = load_file(str(folder / "model.safetensors"))
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    model.eval()
    torch.set_grad_enabled(True)
    return model


def perplexity(losses: Sequence[float]) -> float:
    return float(math.exp(float(np.mean(losses))))
