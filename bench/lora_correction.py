"""Low-rank error correction after low-bit weight quantization (as in INT2.1), on all-MiniLM-L6-v2.

The real sentence embedder is exported with the dynamo exporter. Sentences come from standard-library
docstrings (``graphopt.data.stdlib_sentences``): ``--train`` for calibration and distillation (GPTQ
calibrates on the first ``--calib`` of them) and a disjoint ``--eval`` set, tokenised to 64 tokens.

Per base scheme (3-bit RTN and 3-bit GPTQ, blocks of 32, asymmetric, embeddings included: the ``w3a16``
scheme of ``graphopt.quantize``): the ``lora`` pass inserts float adapters ``x·W + (alpha/r)·(x·A)·B`` (``B = 0``,
so the output is unchanged) on every q, k, v, o and MLP projection of the fp32 graph, the graph is quantized
with the adapters left in float (``exclude=("graphopt.adapter.",)``), and only the adapters are trained with
graphopt's torch executor towards the fp32 graph's embeddings (``finetune(trainable="adapters", teacher=fp32,
loss="cosine")``, one torch thread). The adapters sit next to quantized weights either way; inserting them
before quantization only spares the adapter pass from matching ``DequantizeLinear`` weights.

Reported: mean / min cosine of the held-out sentence embeddings to fp32 before and after training, the
parameters and bytes the adapters add (fp32), the file size, and plain ``w4a16`` (RTN and GPTQ) for
comparison. Evaluated with onnxruntime at *basic* optimisation (at ``extended``/``all`` onnxruntime rewrites
``DequantizeLinear -> MatMul`` into its own kernels with int8 activations, not the reference arithmetic).

Run: ``.venv/bin/python bench/lora_correction.py [--steps N] [--quick] [--out bench/results]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common
import numpy as np
from _common import log

TARGETS = ("q", "k", "v", "o", "mlp")


def embeddings(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from graphopt.runtime import make_session

    session = make_session(model, threads=2, optimization="basic")
    return np.concatenate([session.run(None, {k: v[i:i + 32] for k, v in feeds.items()})[0]
                           for i in range(0, len(feeds["input_ids"]), 32)])


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"mean": float(cos.mean()), "min": float(cos.min())}


def file_bytes(model: Any, scratch: Path, name: str) -> int:
    from graphopt._io import save_model

    path = scratch / f"{name}.onnx"
    save_model(model, path)
    total = sum(p.stat().st_size for p in scratch.glob(f"{name}.onnx*"))
    for p in scratch.glob(f"{name}.onnx*"):
        p.unlink()
    return total


def adapter_parameters(model: Any) -> tuple[int, int, int]:
    """(adapted projections, parameters, bytes) of the adapter initializers (A and B per projection)."""
    from graphopt.rewrites._markers import is_adapter

    values = [v.const_value for n, v in model.graph.initializers.items() if is_adapter(n) and v.const_value is not None]
    return len(values) // 2, sum(int(np.prod(v.shape.numpy())) for v in values), int(sum(v.nbytes for v in values))


def quantized(model: Any, scheme: str, method: str, calib: dict[str, np.ndarray], exclude: tuple[str, ...] = ()) -> Any:
    from graphopt.quantize import quantize

    started = time.perf_counter()
    with _common.stdout_to_stderr():
        result = quantize(model, scheme, calib, weight_method=method, exclude=exclude)
    log(f"  {scheme} {method}: {time.perf_counter() - started:.0f} s")
    return result.model


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Low-rank correction of 3-bit weights on all-MiniLM-L6-v2", "",
        f"{s['train']} distillation sentences (GPTQ calibrates on the first {s['calib']}), {s['eval']} disjoint "
        f"held-out sentences, 64 tokens; LoRA on q, k, v, o and MLP projections ({report['adapters']} per model), "
        "alpha = rank, "
        f"trained alone for {s['steps']} Adam steps (lr {s['lr']:g}, batch {s['batch']}) towards the fp32 "
        "embeddings (cosine loss) with graphopt's torch executor. Cosine: held-out sentence embeddings vs fp32 "
        f"(onnxruntime, basic optimisation). fp32 file: {report['fp32_bytes'] / 1e6:.1f} MB.", "",
        "| model | cosine before training = plain base (mean / min) | cosine after (mean / min) | "
        "adapter parameters | bytes added | file MB | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        after = row.get("after")
        share = f"{row['adapter_bytes'] / report['fp32_bytes']:.1%}" if after else ""
        lines.append(
            f"| {name} | {row['before']['mean']:.4f} / {row['before']['min']:.4f} | "
            + (f"{after['mean']:.4f} / {after['min']:.4f}" if after else "-") + " | "
            + (f"{row['adapter_parameters']:,}" if after else "-") + " | "
            + (f"{row['adapter_bytes']:,} ({share} of fp32)" if after else "-")
            + f" | {row['file_bytes'] / 1e6:.1f} | " + (f"{row['train']['seconds']:.0f}" if after else "-") + " |")
    lines += ["", f"Total run time {report['seconds']:.0f} s on {report['machine']['cpus_usable']} shared CPU cores "
              f"(load average {report['machine']['load_average'][0]:.1f} at start). 3-bit codes are stored in "
              "4-bit containers (ONNX has no 3-bit type), so w3a16 files are as large as w4a16 ones.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--eval", type=int, default=128)
    parser.add_argument("--ranks", default="8,16", help="LoRA ranks on the RTN base (GPTQ gets the largest)")
    parser.add_argument("--methods", default="rtn,gptq", help="weight quantization methods of the bases")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script end to end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.train, args.calib, args.eval, args.ranks, args.methods = 3, 16, 8, 16, "4", "rtn"
    import onnx_ir as ir
    import torch

    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.executor import finetune
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.passes import create_pass

    torch.set_num_threads(1)
    ranks = sorted(int(r) for r in args.ranks.split(","))
    report: dict[str, Any] = {"machine": _common.machine_info(),
                              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quick")}}
    sentences = stdlib_sentences(args.train + args.eval, seed=args.seed + 3)
    train = tokenize(minilm_dir(), sentences[:args.train], sequence=64)
    held = tokenize(minilm_dir(), sentences[args.train:], sequence=64)
    calib = {k: v[:args.calib] for k, v in train.items()}
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="graphopt-lora-") as scratch_dir:
        scratch = Path(scratch_dir)
        with _common.stdout_to_stderr():
            export_sentence_embedder(minilm_dir(), scratch / "minilm.onnx", exporter="dynamo")
        fp32 = ir.load(scratch / "minilm.onnx")
        report["fp32_bytes"] = file_bytes(fp32, scratch, "fp32")
        reference = embeddings(fp32, held)
        for method in args.methods.split(","):
            log(f"w4a16 {method}")
            model = quantized(fp32, "w4a16", method, calib)
            rows[f"w4a16 {method.upper()}"] = {"before": cosines(embeddings(model, held), reference),
                                               "file_bytes": file_bytes(model, scratch, "w4")}
            for rank in (ranks if method == "rtn" else ranks[-1:]):
                name = f"w3a16 {method.upper()} + LoRA r{rank}"
                log(name)
                adapted = create_pass("lora", {"rank": rank, "alpha": float(rank), "targets": TARGETS,
                                               "seed": args.seed})(fp32.clone()).model
                model = quantized(adapted, "w3a16", method, calib, exclude=("graphopt.adapter.",))
                before = cosines(embeddings(model, held), reference)
                result = finetune(model, train, teacher=fp32, trainable="adapters", steps=args.steps, lr=args.lr,
                                  batch_size=args.batch, loss="cosine", seed=args.seed)
                count, params, nbytes = adapter_parameters(model)
                rows[name] = {"before": before, "after": cosines(embeddings(model, held), reference),
                              "adapters": count, "adapter_parameters": params, "adapter_bytes": nbytes,
                              "file_bytes": file_bytes(model, scratch, "lora"), "train": result.to_dict()}
                log(f"  {name}: cosine {before['mean']:.4f} -> {rows[name]['after']['mean']:.4f} "
                    f"({result.seconds:.0f} s training)")
    report["rows"] = rows
    report["adapters"] = max((r.get("adapters", 0) for r in rows.values()), default=0)
    report["seconds"] = _common.elapsed()
    if not args.quick:
        _common.write_json(args.out / "lora_correction.json", report)
        _common.write_atomic(args.out / "lora_correction.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
