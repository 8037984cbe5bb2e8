"""Weight-only and low-precision quantization schemes on all-MiniLM-L6-v2, against onnxruntime's
own 4-bit quantizer, in one run.

The real sentence embedder is exported with the dynamo exporter; sentences come from the
standard library's docstrings (``graphopt.data.stdlib_sentences``), split into disjoint
calibration (first ``--calib``) and evaluation (next ``--eval``) sets, tokenised to 64 tokens.
Every scheme is a list of graphopt passes run on the fp32 model (calibration passed as the path
of the calibration ``.npz``), saved, and evaluated with onnxruntime at *basic* optimisation (at
``extended``/``all`` onnxruntime would rewrite ``DequantizeLinear -> MatMul`` into its own
MatMulNBits with int8 activations, which is not the reference arithmetic). Peers:
``onnxruntime.quantization.MatMulNBitsQuantizer`` 4-bit with its defaults (block 128,
asymmetric, MatMul only) and with block 32 plus Gather tables.

Reported per scheme: mean / min cosine of the sentence embeddings to fp32, nearest-neighbour
agreement (for each evaluation sentence, whether its nearest other sentence by cosine is the same
as with fp32), file bytes relative to the fp32 file, nominal bits per quantized weight, and the
time the passes took (2 shared CPU cores: indicative only).

Run: ``.venv/bin/python bench/quantize_weights_minilm.py [--quick] [--out bench/results]``.
"""

from __future__ import annotations

import argparse
import json
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

CALIB = "@calibration"  # replaced by the calibration .npz path


Scheme = tuple[str, str, list[tuple[str, dict[str, Any]]]]


def schemes(quick: bool) -> list[Scheme]:
    """(name, what it is, passes). ``@calibration`` stands for the calibration file."""
    w = "quantize-weights"
    base: dict[str, Any] = {"block_size": 32, "symmetric": False, "embeddings": True}
    gptq: dict[str, Any] = {**base, "method": "gptq", "calibration": CALIB}
    rows: list[Scheme] = [
        ("w4a16-rtn", "4-bit RTN, blocks of 32 along K, asymmetric, embeddings too", [(w, {**base, "bits": 4})]),
        ("w4a16", "4-bit GPTQ (the w4a16 scheme)", [(w, {**gptq, "bits": 4})]),
        ("w4a16-awq", "4-bit AWQ scaling + RTN", [(w, {**base, "bits": 4, "method": "awq", "calibration": CALIB})]),
        ("w4a16-adadim", "4-bit RTN, AdaDim grouping chosen per weight with activations",
         [(w, {**base, "bits": 4, "grouping": "adadim", "calibration": CALIB})]),
        ("nf4", "NF4 codebook, absmax blocks of 32 (tables: 4-bit int)", [(w, {**base, "format": "nf4"})]),
        ("w3a16", "3-bit GPTQ", [(w, {**gptq, "bits": 3})]),
        ("w2a16", "2-bit GPTQ", [(w, {**gptq, "bits": 2})]),
        ("mixed:3", "BAQ allocation over {2,3,4,8} at 3 bits on average, GPTQ",
         [("quantize-mixed", {**gptq, "average_bits": 3.0})]),
        ("mixed:3-rtn", "BAQ allocation at 3 bits on average, RTN",
         [("quantize-mixed", {**base, "average_bits": 3.0})]),
        ("ternary", "BitNet b1.58 absmean, per tensor (post hoc, no training)", [("quantize-ternary", {})]),
        ("ternary-median", "b1.58 Reloaded median, per output channel",
         [("quantize-ternary", {"scale": "median", "granularity": "channel"})]),
        ("lowrank-q:3,16", "LQ-LoRA: 3-bit base (blocks of 64) + rank-16 float branch, Fisher-weighted",
         [("quantize-lowrank", {"bits": 3, "rank": 16, "calibration": CALIB})]),
        ("w3a16-rtn-b64", "3-bit RTN, blocks of 64 (lowrank-q:3,16 without the branch)",
         [(w, {"bits": 3, "block_size": 64, "symmetric": False})]),
        ("fp16", "fp16 compute, LayerNorm/Softmax/reductions/Clip in fp32", [("quantize-float", {"dtype": "float16"})]),
        ("bf16", "bf16 weight storage, fp32 compute (ORT CPU has no bf16 MatMul)",
         [("quantize-float", {"dtype": "bfloat16", "compute": False})]),
        ("fp8", "E4M3 weights, per output channel (tables per row)", [("quantize-fp8", {"embeddings": True})]),
    ]
    if quick:
        keep = {"w4a16-rtn", "w4a16", "nf4", "fp16"}
        rows = [r for r in rows if r[0] in keep]
    return rows


def _cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    return (reference * other).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(other, axis=1)


def _nearest(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def _bits_per_weight(model: Any) -> float | None:
    raw = model.metadata_props.get("graphopt.quantization")
    if not raw:
        return None
    total = count = 0.0
    for record in json.loads(raw):
        for name, info in record["weights"].items():
            size = model.graph.initializers.get(f"{name}_q") or model.graph.initializers.get(f"{name}_nf4")
            if size is None or "bits" not in info:
                continue
            n = float(np.prod([int(d) for d in size.shape]))
            total += n * info["bits"]
            count += n
    return total / count if count else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--calib", type=int, default=128, help="calibration sentences")
    parser.add_argument("--eval", type=int, default=128, help="evaluation sentences (disjoint)")
    parser.add_argument("--quick", action="store_true", help="four schemes, 32 + 32 sentences")
    args = parser.parse_args(argv)
    if args.quick:
        args.calib, args.eval = 32, 32

    from graphopt._io import load_model, save_model
    from graphopt.data import stdlib_sentences, tokenize
    from graphopt.feeds import save_feeds
    from graphopt.frontend import export_sentence_embedder, minilm_dir
    from graphopt.passes import create_pass
    from graphopt.runtime import make_session

    work = Path(tempfile.mkdtemp(prefix="graphopt-qw-"))
    fp32 = work / "fp32.onnx"
    log("exporting all-MiniLM-L6-v2 (dynamo)")
    with _common.stdout_to_stderr():
        export_sentence_embedder(minilm_dir(), fp32, exporter="dynamo")
    sentences = stdlib_sentences(args.calib + args.eval, seed=0)
    calib_sentences, eval_sentences = sentences[: args.calib], sentences[args.calib :]
    assert not set(calib_sentences) & set(eval_sentences)
    calib_path = save_feeds(tokenize(minilm_dir(), calib_sentences, sequence=64), work / "calib.npz")
    eval_feeds = tokenize(minilm_dir(), eval_sentences, sequence=64)
    reference = make_session(fp32, optimization="basic").run(None, eval_feeds)[0]
    reference_nn = _nearest(reference)
    fp32_bytes = fp32.stat().st_size

    def evaluate(path: Path) -> dict[str, Any]:
        out = make_session(path, optimization="basic").run(None, eval_feeds)[0]
        cos = _cosines(reference, out)
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                "nn_agreement": float(np.mean(_nearest(out) == reference_nn)),
                "bytes": path.stat().st_size, "bytes_ratio": path.stat().st_size / fp32_bytes}

    results: list[dict[str, Any]] = []
    for name, what, steps in schemes(args.quick):
        log(f"{name}: {what}")
        model = load_model(fp32)
        start = time.perf_counter()
        recipe = []
        try:
            for pass_name, settings in steps:
                concrete = {k: (str(calib_path) if v == CALIB else v) for k, v in settings.items()}
                recipe.append({"pass": pass_name, "settings": {k: v for k, v in settings.items()}})
                create_pass(pass_name, concrete)(model)
            seconds = time.perf_counter() - start
            path = save_model(model, work / f"{name.replace(':', '_').replace(',', '_')}.onnx")
            row = {"scheme": name, "what": what, "recipe": recipe, "seconds": round(seconds, 1),
                   "bits_per_weight": _bits_per_weight(model), **evaluate(path)}
        except Exception as exc:  # a scheme that fails is reported, not hidden
            row = {"scheme": name, "what": what, "recipe": recipe, "error": f"{type(exc).__name__}: {exc}"}
        log(f"  {json.dumps({k: v for k, v in row.items() if k not in ('recipe', 'what')})}")
        results.append(row)

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for name, kwargs in (("ort-matmulnbits-4bit", {"block_size": 128, "is_symmetric": False}),
                         ("ort-matmulnbits-4bit-b32+gather", {"block_size": 32, "is_symmetric": False,
                                                              "op_types_to_quantize": ("MatMul", "Gather")})):
        log(f"{name}: onnxruntime MatMulNBitsQuantizer {kwargs}")
        start = time.perf_counter()
        try:
            with _common.stdout_to_stderr():
                quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=4, **kwargs)
                quantizer.process()
            path = work / f"{name}.onnx"
            quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
            row = {"scheme": name, "what": f"onnxruntime MatMulNBitsQuantizer {kwargs}", "bits_per_weight": 4.0,
                   "seconds": round(time.perf_counter() - start, 1), **evaluate(path)}
        except Exception as exc:
            row = {"scheme": name, "what": f"onnxruntime MatMulNBitsQuantizer {kwargs}",
                   "error": f"{type(exc).__name__}: {exc}"}
        log(f"  {json.dumps({k: v for k, v in row.items() if k != 'what'})}")
        results.append(row)

    data = {
        "machine": _common.machine_info(),
        "git": _common.git_state(),
        "model": "all-MiniLM-L6-v2 (dynamo export)",
        "fp32_bytes": fp32_bytes,
        "calibration_sentences": len(calib_sentences),
        "evaluation_sentences": len(eval_sentences),
        "sequence": 64,
        "onnxruntime": _common.package_version("onnxruntime"),
        "results": results,
    }
    stem = "quantize_weights_minilm" + ("_quick" if args.quick else "")
    _common.write_json(args.out / f"{stem}.json", data)
    _common.write_atomic(args.out / f"{stem}.md", _markdown(data))
    print(_markdown(data))
    return 0


def _markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# Weight quantization schemes on {data['model']}",
        "",
        f"{data['calibration_sentences']} calibration and {data['evaluation_sentences']} disjoint evaluation sentences "
        f"(standard-library docstrings, {data['sequence']} tokens); onnxruntime {data['onnxruntime']} at basic "
        "optimisation; fp32 file "
        f"{data['fp32_bytes'] / 1e6:.1f} MB. Cosine: sentence embeddings vs fp32. NN: nearest-neighbour agreement.",
        "",
        "| scheme | what | mean cosine | min cosine | NN agreement | bytes / fp32 | bits / weight | pass time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        if "error" in r:
            lines.append(f"| {r['scheme']} | {r['what']} | failed: {r['error'][:120]} | | | | | |")
            continue
        bits = f"{r['bits_per_weight']:.2f}" if r.get("bits_per_weight") else "-"
        lines.append(
            f"| {r['scheme']} | {r['what']} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | "
            f"{r['nn_agreement']:.3f} | {r['bytes_ratio']:.3f} | {bits} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
