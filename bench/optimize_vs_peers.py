"""graphopt's optimisation recipes against their peers, side by side, on the same models in one run.

For each model (the real all-MiniLM-L6-v2 sentence embedder exported with the dynamo and with the
TorchScript exporter, a small random-weight GPT-2, and a hand-built ResNet-style CNN) every tool
turns the exported ONNX file into an optimised ONNX file:

- ``graphopt-default``: ``apply_recipe(load_model(p), NAMED_RECIPES["default"])`` (cleanup plus
  onnxruntime contrib fusions), then ``save_model``;
- ``graphopt-all-fusions``: the default recipe with ``fuse-ort``'s ``require_attention=False``,
  i.e. its normalisation / GELU fusions kept even where attention is not fused (the evidence for
  that setting's default);
- ``graphopt-portable``: the ``portable`` recipe (cleanup, standard ONNX ops only);
- ``onnxscript``: ``onnxscript.optimizer.optimize`` on the onnx_ir model;
- ``onnxsim``: ``onnxsim.simplify(onnx.load(p))``;
- ``ort-offline``: onnxruntime's offline graph optimisation (``SessionOptions.optimized_model_filepath``
  at ``ORT_ENABLE_EXTENDED``, the level onnxruntime recommends for offline use).

Each tool is timed file to file (load, optimise, save) in this process; the tools take turns
(one repetition of every tool, then the next) and the median of the repetitions is reported.
Each result is counted (nodes, bytes), verified against the original with
``graphopt.verify.verify_models`` (atol 1e-4, rtol 1e-3), and all results of one model are
benchmarked in ONE ``graphopt.bench.benchmark`` call, so that they alternate in the same worker
process; latencies are reported as per-round ratios to the original (median, p10, p90). Every
session in the benchmark uses onnxruntime's default ``ORT_ENABLE_ALL``: onnxruntime re-optimises
each graph when it loads it, so pure cleanups are expected to run as fast as the original; the
differences come from fusions that onnxruntime does not find by itself.

Run: ``.venv/bin/python bench/optimize_vs_peers.py [--quick] [--out bench/results]``.
Exported models are cached (``--cache``; keyed by the model's settings and the exporting
library versions), so a second run skips the exports.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common
import numpy as np
from _common import log

TOOLS = ("graphopt-default", "graphopt-all-fusions", "graphopt-portable", "onnxscript", "onnxsim", "ort-offline")
PEERS = ("onnxscript", "onnxsim", "ort-offline")
BATCH = 8
SEQUENCE = 128
IMAGE = 64
ATOL, RTOL = 1e-4, 1e-3


@dataclasses.dataclass(frozen=True)
class Settings:
    tool_reps: int
    warmup: int
    rounds: int | None  # None: each model's own number of rounds (ModelSpec.rounds)
    threads: int = 2


# MiniLM at 8 x 128 tokens takes over a second per run on 2 busy cores: its rounds are fewer.
FULL = Settings(tool_reps=3, warmup=3, rounds=None)
QUICK = Settings(tool_reps=1, warmup=1, rounds=3)
DASH = "\u2013"  # en dash, for ranges in the Markdown


# ---------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    settings: dict[str, Any]
    export: Callable[[Path, Path], Any]  # (target path, scratch folder) -> graphopt ExportResult
    feeds: Callable[[Path], dict[str, np.ndarray]]
    feeds_note: str
    rounds: int  # alternating benchmark rounds in full mode


def _export_minilm(exporter: str) -> Callable[[Path, Path], Any]:
    def export(path: Path, scratch: Path) -> Any:
        from graphopt.frontend import export_sentence_embedder, minilm_dir

        return export_sentence_embedder(minilm_dir(), path, exporter=exporter)

    return export


def _minilm_feeds(path: Path) -> dict[str, np.ndarray]:
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.frontend import minilm_dir

    feeds = tokenize(minilm_dir(), stdlib_sentences(BATCH, seed=0), sequence=SEQUENCE)
    return _restrict(feeds, path)


def _restrict(feeds: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Only the feeds the model takes (an exporter may drop an unused input)."""
    from graphopt._io import load_model
    from graphopt.feeds import input_specs

    names = {spec.name for spec in input_specs(load_model(path, validate=False))}
    return {k: v for k, v in feeds.items() if k in names}


GPT2_CONFIG = {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 5000, "n_positions": 512, "seed": 0}


def _export_gpt2(path: Path, scratch: Path) -> Any:
    import torch
    import transformers

    from graphopt.frontend import export_hf_model

    settings = dict(GPT2_CONFIG)
    seed = settings.pop("seed")
    config = transformers.GPT2Config(**settings, architectures=["GPT2LMHeadModel"], use_cache=False)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    directory = scratch / "gpt2-hf"
    model.save_pretrained(directory)
    return export_hf_model(directory, path, exporter="auto")


Shapes = dict[str, tuple[int, ...]]


def _synthetic_feeds(shapes: Shapes | None = None) -> Callable[[Path], dict[str, np.ndarray]]:
    def feeds(path: Path) -> dict[str, np.ndarray]:
        from graphopt._io import load_model
        from graphopt.feeds import input_specs, synthesize_feeds

        specs = input_specs(load_model(path, validate=False))
        explicit = dict(shapes or {})
        for spec in specs:
            if spec.name not in explicit and spec.shape is not None and len(spec.shape) == 2:
                explicit[spec.name] = (BATCH, SEQUENCE)
        return synthesize_feeds(specs, shapes=explicit, batch=BATCH, sequence=SEQUENCE, seed=0)

    return feeds


CNN_CONFIG = {"widths": [32, 64, 128], "blocks": 2, "classes": 10, "image": IMAGE, "seed": 0}


def _build_cnn() -> Any:
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + self.shortcut(x))

    class ResNetSmall(nn.Module):
        def __init__(self, widths: list[int], blocks: int, classes: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU())
            layers: list[nn.Module] = []
            cin = widths[0]
            for i, width in enumerate(widths):
                for j in range(blocks):
                    layers.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                    cin = width
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(pixels))), 1))

    torch.manual_seed(CNN_CONFIG["seed"])
    model = ResNetSmall(CNN_CONFIG["widths"], CNN_CONFIG["blocks"], CNN_CONFIG["classes"])
    # Trained-looking BatchNorm statistics, so that folding BN into Conv changes real numbers.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
    return model.eval()


def _export_cnn(path: Path, scratch: Path) -> Any:
    import torch

    from graphopt.frontend import export_module

    model = _build_cnn()
    example = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
    return export_module(model, (example,), path, input_names=["pixels"], output_names=["logits"],
                         dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, exporter="auto")


_TEXT = f"{BATCH} x {SEQUENCE} tokens of real text (graphopt.data.stdlib_sentences, seed 0)"

MODELS = (
    ModelSpec("minilm-dynamo", "all-MiniLM-L6-v2 sentence embedder (real weights), dynamo exporter",
              {"model": "all-MiniLM-L6-v2", "exporter": "dynamo"}, _export_minilm("dynamo"), _minilm_feeds,
              _TEXT, rounds=30),
    ModelSpec("minilm-torchscript", "all-MiniLM-L6-v2 sentence embedder (real weights), TorchScript exporter",
              {"model": "all-MiniLM-L6-v2", "exporter": "torchscript"}, _export_minilm("torchscript"),
              _minilm_feeds, _TEXT, rounds=30),
    ModelSpec("gpt2-small-random", "GPT-2 LM head, 4 layers, hidden 256, 4 heads, vocab 5000, random weights "
              "(seed 0), exporter auto (dynamo first)", {"model": "gpt2", **GPT2_CONFIG}, _export_gpt2,
              _synthetic_feeds(), f"synthesised: {BATCH} x {SEQUENCE} token ids, mask all ones", rounds=40),
    ModelSpec("resnet-cnn", "ResNet-style CNN (Conv+BatchNorm+ReLU basic blocks, widths 32/64/128, 2 blocks "
              "each), random weights (seed 0), exporter auto (dynamo first)",
              {"model": "resnet", **CNN_CONFIG}, _export_cnn, _synthetic_feeds({"pixels": (BATCH, 3, IMAGE, IMAGE)}),
              f"synthesised: {BATCH} x 3 x {IMAGE} x {IMAGE} N(0, 1) pixels", rounds=50),
)


def _cache_key(spec: ModelSpec) -> str:
    """Keyed by the model's settings, the exporting libraries' versions and graphopt's frontend."""
    from graphopt import frontend

    versions = {k: _common.package_version(k)
                for k in ("torch", "transformers", "onnxscript", "onnx", "onnx-ir")}
    sources = b"".join(p.read_bytes() for p in sorted(Path(frontend.__file__).parent.glob("*.py")))
    blob = json.dumps({"settings": spec.settings, "versions": versions,
                       "frontend": hashlib.sha256(sources).hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def export_model(spec: ModelSpec, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The exported original (from the cache when it is there) and the export's facts."""
    folder = cache / f"{spec.name}-{_cache_key(spec)}"
    path = folder / "original.onnx"
    meta_path = folder / "export.json"
    if path.is_file() and meta_path.is_file():
        log(f"{spec.name}: using the cached export {path}")
        return path, {**json.loads(meta_path.read_text()), "cached": True}
    folder.mkdir(parents=True, exist_ok=True)
    log(f"{spec.name}: exporting ({spec.description})")
    with tempfile.TemporaryDirectory(prefix="export-", dir=folder) as scratch, _common.stdout_to_stderr():
        result = spec.export(path, Path(scratch))
    meta = {"exporter": result.exporter, "max_abs_error_vs_torch": result.max_abs_error,
            "export_seconds": round(result.seconds, 2), "inputs": list(result.input_names),
            "outputs": list(result.output_names)}
    _common.write_json(meta_path, meta)
    log(f"{spec.name}: exported with {result.exporter} in {result.seconds:.1f} s "
        f"(max |torch - onnxruntime| = {result.max_abs_error:.2e})")
    return path, {**meta, "cached": False}


# ---------------------------------------------------------------------------------------------
# Tools: each turns the file ``src`` into the file ``dst``


def _graphopt(recipe: str, fuse_ort: dict[str, Any] | None = None) -> Callable[[Path, Path], None]:
    def run(src: Path, dst: Path) -> None:
        import dataclasses

        from graphopt._io import load_model, save_model
        from graphopt.recipes import NAMED_RECIPES, RecipeStep, apply_recipe

        chosen = NAMED_RECIPES[recipe]
        if fuse_ort is not None:
            steps = tuple(RecipeStep(s.pass_name, fuse_ort) if s.pass_name == "fuse-ort" else s for s in chosen.steps)
            chosen = dataclasses.replace(chosen, steps=steps)
        model = load_model(src)
        apply_recipe(model, chosen)
        save_model(model, dst)

    return run


def _onnxscript(src: Path, dst: Path) -> None:
    import onnx_ir as ir
    import onnxscript.optimizer

    model = onnxscript.optimizer.optimize(ir.load(src))
    ir.save(model, dst)


class ToolFailed(Exception):
    pass


def _onnxsim(src: Path, dst: Path) -> None:
    import onnx
    import onnxsim

    simplified, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise ToolFailed("onnxsim.simplify reported that its check failed")
    onnx.save(simplified, str(dst))


def _ort_offline(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])


TOOL_FUNCS: dict[str, Callable[[Path, Path], None]] = {
    "graphopt-default": _graphopt("default"),
    "graphopt-all-fusions": _graphopt("default", {"require_attention": False}),
    "graphopt-portable": _graphopt("portable"),
    "onnxscript": _onnxscript,
    "onnxsim": _onnxsim,
    "ort-offline": _ort_offline,
}


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


class _Collect(logging.Handler):
    """Collects the warnings graphopt logs while a tool runs (e.g. a fusion it gave up on)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


def run_tools(original: Path, folder: Path, reps: int) -> dict[str, dict[str, Any]]:
    """Run every tool ``reps`` times, taking turns; return per tool its times or its failure."""
    results: dict[str, dict[str, Any]] = {tool: {"times_s": [], "error": None, "warnings": []}
                                          for tool in TOOLS}
    collector = _Collect()
    logging.getLogger("graphopt").addHandler(collector)
    for rep in range(reps):
        for tool in TOOLS:
            entry = results[tool]
            if entry["error"] is not None:
                continue
            dst = folder / f"{tool}.onnx"
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            gc.collect()
            collector.messages.clear()
            t0 = time.perf_counter()
            try:
                with _common.stdout_to_stderr():
                    TOOL_FUNCS[tool](original, dst)
                if not dst.is_file():
                    raise ToolFailed("the tool wrote no model")
            except Exception as exc:  # peers raise anything; record it and go on
                entry["error"] = _describe(exc)
                log(f"  {tool}: FAILED ({entry['error'][:200]})")
                continue
            finally:
                entry["warnings"] += [m for m in collector.messages if m not in entry["warnings"]]
            seconds = time.perf_counter() - t0
            entry["times_s"].append(round(seconds, 4))
            log(f"  {tool}: rep {rep + 1}/{reps} took {seconds:.2f} s")
    logging.getLogger("graphopt").removeHandler(collector)
    for entry in results.values():
        ok = entry["times_s"] and not entry["error"]
        entry["time_s"] = statistics.median(entry["times_s"]) if ok else None
    return results


# ---------------------------------------------------------------------------------------------
# One model


def bench_model(spec: ModelSpec, cache: Path, settings: Settings) -> dict[str, Any]:
    from graphopt._io import load_model
    from graphopt.bench import benchmark
    from graphopt.errors import GraphoptError
    from graphopt.verify import verify_models

    record: dict[str, Any] = {"name": spec.name, "description": spec.description, "settings": spec.settings,
                              "feeds_note": spec.feeds_note}
    try:
        original, record["export"] = export_model(spec, cache)
    except Exception as exc:  # an export failure skips the model, not the run
        record["error"] = f"export failed: {_describe(exc)}"
        log(f"{spec.name}: {record['error']}")
        return record
    feeds = spec.feeds(original)
    record["feeds"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()}
    record["original"] = _common.model_stats(original)
    signature = load_model(original, validate=False)

    folder = original.parent / "tools"
    folder.mkdir(exist_ok=True)
    log(f"{spec.name}: running {len(TOOLS)} tools x {settings.tool_reps} repetitions")
    tools = run_tools(original, folder, settings.tool_reps)

    bench_paths = [original]
    bench_names = ["original"]
    for tool in TOOLS:
        entry = tools[tool]
        if entry["error"] is not None:
            continue
        path = folder / f"{tool}.onnx"
        entry.update(_common.model_stats(path))
        try:
            report = verify_models(original, path, feeds, atol=ATOL, rtol=RTOL, signature=signature)
        except (GraphoptError, Exception) as exc:  # a result onnxruntime cannot load or run
            entry["verify_error"] = _describe(exc)
            log(f"  {tool}: verification could not run ({entry['verify_error'][:200]})")
            continue
        entry["verify"] = {"passed": report.passed, "max_abs": report.max_abs,
                           "min_cosine": report.min_cosine, "outputs": report.to_dict()["outputs"]}
        log(f"  {tool}: {entry['nodes']} nodes, max abs err {report.max_abs:.2e}, "
            f"{'passed' if report.passed else 'FAILED'} verification")
        bench_paths.append(path)
        bench_names.append(tool)
    record["tools"] = tools

    rounds = settings.rounds or spec.rounds
    log(f"{spec.name}: benchmarking {len(bench_paths)} models in one alternating worker "
        f"(warmup {settings.warmup}, {rounds} rounds)")
    try:
        bench = benchmark(bench_paths, feeds, threads=settings.threads, warmup=settings.warmup,
                          runs=rounds, max_runs=rounds, timeout=900)
    except GraphoptError as exc:
        record["bench_error"] = _describe(exc)
        log(f"{spec.name}: benchmark failed ({record['bench_error']})")
        return record
    raw = bench.to_dict()
    record["bench"] = {k: v for k, v in raw.items() if k not in ("models", "ratios")}
    record["bench"]["order"] = bench_names
    latencies = {name: list(m.latencies_ms) for name, m in zip(bench_names, bench.models)}
    record["original"]["median_ms"] = bench.models[0].median_ms
    record["original"]["session_ms"] = bench.models[0].session_ms
    record["original"]["latencies_ms"] = latencies["original"]
    for name, model, ratio in zip(bench_names[1:], bench.models[1:], bench.ratios):
        tools[name]["latency_ratio"] = {"median": ratio.median, "p10": ratio.p10, "p90": ratio.p90}
        tools[name]["median_ms"] = model.median_ms
        tools[name]["session_ms"] = model.session_ms
        tools[name]["latencies_ms"] = latencies[name]
        log(f"  {name}: latency ratio vs original {ratio.median:.3f} ({ratio.p10:.3f}-{ratio.p90:.3f})")
    record["summary"] = summarise(record, latencies)
    return record


def _range(r: dict[str, float]) -> str:
    return f"{r['median']:.3f} ({r['p10']:.3f}{DASH}{r['p90']:.3f})"


def summarise(record: dict[str, Any], latencies: dict[str, list[float]]) -> dict[str, Any]:
    """The per-model verdicts: graphopt-default against the best peer, and its tool time
    against onnxsim's; plus flags for anything that looks wrong."""
    tools = record["tools"]
    default = tools["graphopt-default"]
    summary: dict[str, Any] = {"flags": []}
    peers = [p for p in PEERS if "latency_ratio" in tools[p]]
    if "latency_ratio" not in default:
        why = default.get("error") or default.get("verify_error") or "not benchmarked"
        summary["speed"] = f"graphopt-default has no latency: {why[:200]}"
        summary["at_least_as_fast"] = None
    elif not peers:
        summary["speed"] = "no peer produced a benchmarkable model"
        summary["at_least_as_fast"] = None
    else:
        best = min(peers, key=lambda p: tools[p]["latency_ratio"]["median"])
        mine, theirs = default["latency_ratio"], tools[best]["latency_ratio"]
        if _common.ranges_overlap(mine, theirs):
            verdict = "tie"
        elif mine["median"] < theirs["median"]:
            verdict = "faster"
        else:
            verdict = "slower"
        # Both were timed in the same rounds, so their per-round ratio is the sharper comparison.
        direct = _common.percentiles(np.asarray(latencies["graphopt-default"]) / np.asarray(latencies[best]))
        if direct["p90"] < 1:
            direct_verdict = "faster"
        elif direct["p10"] > 1:
            direct_verdict = "slower"
        else:
            direct_verdict = "tie"
        summary.update({"best_peer": best, "verdict": verdict, "at_least_as_fast": verdict != "slower",
                        "default_vs_best_peer_per_round": direct, "per_round_verdict": direct_verdict})
        summary["speed"] = (
            f"graphopt-default {_range(mine)} vs best peer {best} {_range(theirs)}: **{verdict}** "
            f"(p10{DASH}p90 ranges {'overlap' if verdict == 'tie' else 'do not overlap'}); "
            f"per round graphopt-default / {best} = {_range(direct)}: {direct_verdict}"
        )
    sim = tools["onnxsim"]
    if default.get("time_s") is None:
        summary["tool_time"] = "graphopt-default failed"
        summary["tool_time_below_onnxsim"] = None
    elif sim.get("time_s") is None:
        summary["tool_time"] = (f"onnxsim failed ({(sim.get('error') or '?')[:200]}); "
                                f"graphopt-default took {default['time_s']:.2f} s")
        summary["tool_time_below_onnxsim"] = None
    else:
        below = default["time_s"] < sim["time_s"]
        summary["tool_time_below_onnxsim"] = below
        summary["tool_time"] = (f"graphopt-default {default['time_s']:.2f} s vs onnxsim {sim['time_s']:.2f} s "
                                f"({default['time_s'] / sim['time_s']:.2f}x): **{'below' if below else 'not below'}**")
    flags: list[str] = summary["flags"]
    for tool in TOOLS:
        entry = tools[tool]
        for warning in entry.get("warnings", []):
            flags.append(f"{tool} logged a warning: {warning[:400]}")
        if entry["error"]:
            flags.append(f"{tool} failed: {entry['error'][:300]}")
        elif "verify_error" in entry:
            flags.append(f"{tool} wrote a model onnxruntime cannot load or run: {entry['verify_error'][:300]}")
        elif not entry["verify"]["passed"]:
            flags.append(f"{tool} failed verification (max abs err {entry['verify']['max_abs']:.2e})")
        ratio = entry.get("latency_ratio")
        if ratio and ratio["p10"] > 1:
            flags.append(f"{tool} ran slower than the original in this run (ratio {_range(ratio)}, "
                         f"whole p10{DASH}p90 above 1)")
    if "BatchNormalization" not in record["original"]["ops"] and "Conv" in record["original"]["ops"]:
        flags.append("note: the exporter already folded every BatchNormalization into its Conv, so no tool "
                     "had a BatchNormalization left to fold")
    return summary


# ---------------------------------------------------------------------------------------------
# Report


def _fmt_err(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    v = machine["versions"]
    load = ", ".join(f"{x:.1f}" for x in machine["load_average"] or [])
    load_end = ", ".join(f"{x:.1f}" for x in result["load_average_end"] or [])
    commit = (machine["git"]["commit"] or "?")[:10]
    dirty = " (uncommitted changes)" if machine["git"]["dirty"] else ""
    settings = result["settings"]
    lines = [
        "# graphopt optimisation recipes vs peers",
        "",
        f"Run {machine['date']} on {machine['cpu_model']} ({machine['cpus_usable']} usable CPUs; load average "
        f"{load} at start, {load_end} at the end), {'quick (smoke test)' if result['quick'] else 'full'} mode, "
        f"total {result['total_seconds']:.0f} s. onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, "
        f"onnxscript {v['onnxscript']}, onnx-ir {v['onnx-ir']}, onnxsim {v['onnxsim']}, torch {v['torch']}, "
        f"transformers {v['transformers']}; graphopt at {commit}{dirty}, sources sha256 "
        f"{(machine.get('graphopt_sources_sha256') or '?')[:12]}.",
        "",
        "- Tool time: file to file (load, optimise, save), median of "
        f"{settings['tool_reps']} repetitions, the tools taking turns in one process.",
        "- graphopt-default / graphopt-portable: `apply_recipe(load_model(p), NAMED_RECIPES[...])` then "
        "`save_model`; graphopt-all-fusions: the default recipe with fuse-ort's `require_attention=False`. "
        "onnxscript: `onnxscript.optimizer.optimize` on the onnx_ir model. onnxsim: "
        "`onnxsim.simplify(onnx.load(p))`. ort-offline: onnxruntime's offline optimisation, "
        "`SessionOptions.optimized_model_filepath` at **`ORT_ENABLE_EXTENDED`**.",
        "- Latency: all results of a model in ONE `graphopt.bench.benchmark` call (one worker, models in "
        f"alternation, {settings['threads']} threads, warmup {settings['warmup']}, rounds per model below); "
        f"ratio = result / original per round, median (p10{DASH}p90). Every session runs at onnxruntime's "
        "default `ORT_ENABLE_ALL`, so onnxruntime re-optimises each graph at load time: pure cleanups are "
        "expected to tie with the original; differences come from fusions onnxruntime does not find by "
        "itself. The machine is shared and noisy; only ratios are claims.",
        f"- Verified: `graphopt.verify.verify_models` against the original at atol {ATOL:g}, rtol {RTOL:g}.",
        "- Summary: graphopt-default against the fastest peer (onnxscript, onnxsim, ort-offline) by median "
        f"ratio; a tie when their p10{DASH}p90 ranges overlap. Because both ran in the same rounds, the "
        "per-round ratio graphopt-default / best peer is given too (faster / slower when its whole "
        f"p10{DASH}p90 lies below / above 1).",
        "",
    ]
    for model in result["models"]:
        lines.append(f"## {model['name']}")
        lines.append("")
        lines.append(model["description"] + ".")
        if "error" in model:
            lines += ["", f"**Skipped**: {model['error']}", ""]
            continue
        export = model["export"]
        original = model["original"]
        bench = model.get("bench", {})
        context = (f" Original median {original['median_ms']:.0f} ms per batch here (context only), "
                   f"{bench.get('rounds')} rounds." if "median_ms" in original else "")
        lines.append(
            f"Feeds: {model['feeds_note']}. Exported with {export['exporter']} "
            f"(max |torch - onnxruntime| = {_fmt_err(export['max_abs_error_vs_torch'] or 0)}).{context}"
        )
        lines.append("")
        lines.append(f"| tool | tool time (s) | nodes | size (MB) | latency vs original (median, p10{DASH}p90) "
                     "| max abs err | verified |")
        lines.append("|---|---|---|---|---|---|---|")
        lines.append(f"| original | — | {original['nodes']} | {original['bytes'] / 1e6:.2f} | 1 (baseline) "
                     "| — | — |")
        for tool in TOOLS:
            entry = model["tools"][tool]
            if entry["error"] is not None:
                lines.append(f"| {tool} | failed | — | — | — | — | failed: {entry['error'][:160]} |")
                continue
            ratio = entry.get("latency_ratio")
            latency = _range(ratio) if ratio else "—"
            if "verify" in entry:
                ver = entry["verify"]
                err = _fmt_err(ver["max_abs"])
                verified = f"{'yes' if ver['passed'] else '**NO**'} (cos {ver['min_cosine']:.6f})"
            else:
                err, verified = "—", f"**could not run**: {entry.get('verify_error', '?')[:170]}"
            lines.append(f"| {tool} | {entry['time_s']:.2f} | {entry['nodes']} | {entry['bytes'] / 1e6:.2f} "
                         f"| {latency} | {err} | {verified} |")
        lines.append("")
        if "bench_error" in model:
            lines += [f"Benchmark failed: {model['bench_error']}", ""]
        summary = model.get("summary")
        if summary:
            lines.append(f"**Summary.** Speed: {summary['speed'].rstrip('. ')}. "
                         f"Tool time: {summary['tool_time']}.")
            for flag in summary["flags"]:
                lines.append(f"- {flag}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions and rounds (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for optimize_vs_peers.json and .md (default: bench/results)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "graphopt-bench-cache",
                        help="folder for the exported models and the tools' outputs")
    parser.add_argument("--models", nargs="+", choices=[m.name for m in MODELS], help="only these models")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    settings = QUICK if args.quick else FULL
    args.cache.mkdir(parents=True, exist_ok=True)
    machine = _common.machine_info()
    log(f"optimize_vs_peers: {'quick' if args.quick else 'full'} mode, cache {args.cache}")
    models = []
    for spec in MODELS:
        if args.models and spec.name not in args.models:
            continue
        models.append(bench_model(spec, args.cache, settings))
    result = {
        "benchmark": "optimize_vs_peers",
        "quick": args.quick,
        "settings": dataclasses.asdict(settings) | {
            "batch": BATCH, "sequence": SEQUENCE, "atol": ATOL, "rtol": RTOL,
            "rounds_per_model": {m["name"]: m.get("bench", {}).get("rounds") for m in models},
            "ort_offline_level": "ORT_ENABLE_EXTENDED", "bench_session_level": "ORT_ENABLE_ALL",
        },
        "machine": machine,
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "total_seconds": round(_common.elapsed(), 1),
        "models": models,
    }
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "optimize_vs_peers.json", result)
    _common.write_atomic(args.out / "optimize_vs_peers.md", text)
    log(f"wrote {args.out / 'optimize_vs_peers.json'} and {args.out / 'optimize_vs_peers.md'} "
        f"in {result['total_seconds']:.0f} s")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
