"""Fuzzing every verb in ``graphopt.cli._VERBS`` with broken models and feeds.

Each verb's command line is built from its own argparse parser (verbs added later are covered
without editing this file): the bad model goes wherever the verb reads a model, ``-o`` into the
test folder. Every broken input must give exit 2, one line on stderr without a traceback, no output
and no temporary file left behind, the input unchanged byte for byte, and an answer within
``TIMEOUT`` seconds. Mutated models that stay valid may also succeed (exit 0).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphopt.cli import _VERBS, build_parser, main
from tests.conftest import SMALL_MLP, digest, write_cycle_model, write_missing_initializer_model, write_text_model

TIMEOUT = 30  # seconds per command

# Values for required options the fuzzer cannot derive from the parser.
_REQUIRED_VALUES = {"target": "ort-cpu"}
# Arguments without which a verb stops before reading its model (its defaults do nothing).
_VERB_ARGS = {"prune": ["--mlp", "0.5"], "rewrite": ["--pass", "fold-constants"]}
# Options that keep a run short where a verb has them.
_FAST_OPTIONS = {"--no-bench": None, "--runs": "2", "--warmup": "1", "--steps": "2"}
_OUTPUT_DESTS = {"output", "out", "output_dir", "workdir"}
# Options that take an .npz of feeds (evaluation feeds or calibration data, same format).
_FEED_OPTIONS = ("--inputs", "--calib", "--data")
# Commands that read a model but need an artefact the fuzzer does not make.
_NEEDS_ARTEFACT = {("score",): "a trained predictor (--predictor PRED)"}


class Hung(BaseException):
    """Raised by the alarm; a BaseException so that the CLI's error handler cannot swallow it."""


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def _raise(signum: int, frame: object) -> None:
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every verb (and sub-command of a verb) with its parser."""
    verbs = _subparsers(build_parser())
    commands: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for verb in _VERBS:
        nested = _subparsers(verbs[verb])
        if nested:
            commands.update({(verb, sub): p for sub, p in nested.items()})
        else:
            commands[(verb,)] = verbs[verb]
    return commands


COMMANDS = _commands()
UNBUILDABLE: dict[tuple[str, ...], str] = {}


def _reads_model(action: argparse.Action) -> bool:
    text = f"{action.dest} {action.metavar or ''} {action.help or ''}".lower()
    return "model" in text or ".onnx" in text


def build_argv(
    command: tuple[str, ...], model: Path, out: Path, feeds: Path | None = None, calib: Path | None = None
) -> list[str] | None:
    """The command line running ``command`` on ``model`` (``None``: the verb reads no model).

    ``feeds`` go to ``--inputs`` (or ``--calib``); without them, verbs that take only ``--calib``
    get ``calib``, valid calibration data, so that they reach the model instead of stopping early.
    """
    parser = COMMANDS[command]
    argv, reads = [*command], False
    for action in parser._actions:
        if action.option_strings:
            continue
        if not _reads_model(action):
            return None
        argv.append(str(model))
        reads = True
    if not reads:
        return None
    options = {s: a for a in parser._actions for s in a.option_strings}
    for action in parser._actions:
        if not action.option_strings or not action.required:
            continue
        flag = action.option_strings[-1]
        if action.dest in _OUTPUT_DESTS:
            argv += [flag, str(out)]
        elif flag in _FEED_OPTIONS:  # required data (``finetune --data``): the fuzzed feeds, or valid ones
            argv += [flag, str(feeds or calib or "data.npz")]
            feeds = None
        elif action.choices:
            argv += [flag, str(next(iter(action.choices)))]
        elif action.dest in _REQUIRED_VALUES:
            argv += [flag, _REQUIRED_VALUES[action.dest]]
        else:
            UNBUILDABLE[command] = f"no value known for required option {flag} (add it to _REQUIRED_VALUES)"
            return None
    for group in parser._mutually_exclusive_groups:
        if group.required and not any(a.dest in _REQUIRED_VALUES for a in group._group_actions):
            flags = "/".join(a.option_strings[-1] for a in group._group_actions)
            UNBUILDABLE[command] = f"no value known for any of the required options {flags}"
            return None
        for action in group._group_actions if group.required else ():
            if action.dest in _REQUIRED_VALUES:
                argv += [action.option_strings[-1], _REQUIRED_VALUES[action.dest]]
                break
    for flag in ("--output", "-o"):
        if flag in options and not options[flag].required:
            argv += [flag, str(out)]
            break
    argv += _VERB_ARGS.get(command[0], [])
    for flag, value in _FAST_OPTIONS.items():
        if flag in options:
            argv += [flag] if value is None else [flag, value]
    if feeds is None and calib is not None and "--calib" in options and "--inputs" not in options:
        argv += ["--calib", str(calib)]
    if feeds is not None:
        feed_flag = next((f for f in _FEED_OPTIONS if f in options), None)
        if feed_flag is None:
            return None
        argv += [feed_flag, str(feeds)]
    return argv


# --- broken models -------------------------------------------------------------------------------


def _mlp_bytes(tmp: Path) -> bytes:
    return write_text_model(tmp / "source.mlp", SMALL_MLP).read_bytes()


def _truncate(fraction: float) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        data = _mlp_bytes(path.parent)
        path.write_bytes(data[: int(len(data) * fraction)])
        (path.parent / "source.mlp").unlink()

    return make


def _save(path: Path, model: onnx.ModelProto) -> None:
    path.write_bytes(model.SerializeToString())


def _graph(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto] | None = None, opset: int = 18) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "fuzz", inputs, outputs, initializer=initializers or [])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _float(name: str, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _absurd_input_shape(path: Path) -> None:
    """A static input of 2**40 x 2**40 floats: synthesising feeds for it must fail cleanly."""
    big = 1 << 40
    _save(path, _graph([oh.make_node("Relu", ["x"], ["y"])], [_float("x", [big, big])], [_float("y", [big, big])]))


def _absurd_reshape(path: Path) -> None:
    """A Reshape to 2**62 elements from a 4-element input."""
    big = 1 << 31
    shape = oh.make_tensor("s", onnx.TensorProto.INT64, [2], [big, big])
    _save(path, _graph([oh.make_node("Reshape", ["x", "s"], ["y"])], [_float("x", [4])], [_float("y", [big, big])],
                       [shape]))


def _initializer_without_data(path: Path) -> None:
    """An initializer that declares 2**31 x 2**31 floats and holds none."""
    w = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[1 << 31, 1 << 31])
    _save(path, _graph([oh.make_node("MatMul", ["x", "w"], ["y"])], [_float("x", [2, 1 << 31])],
                       [_float("y", [2, 1 << 31])], [w]))


def _huge_attribute(path: Path) -> None:
    """A Transpose whose ``perm`` holds half a million entries for a rank-2 input."""
    node = oh.make_node("Transpose", ["x"], ["y"], perm=list(range(500_000)))
    _save(path, _graph([node], [_float("x", [2, 3])], [_float("y", [3, 2])]))


def _huge_string_attribute(path: Path) -> None:
    """A node of an unknown domain carrying a 20 MB string attribute."""
    node = oh.make_node("Blob", ["x"], ["y"], domain="fuzz.custom", payload="x" * 20_000_000)
    model = _graph([node], [_float("x", [2])], [_float("y", [2])])
    model.opset_import.append(oh.make_opsetid("fuzz.custom", 1))
    _save(path, model)


def _wrong_dtype_model(path: Path) -> None:
    """``Add`` of a float and an int64 input (the types disagree)."""
    inputs = [_float("x", [2]), oh.make_tensor_value_info("n", onnx.TensorProto.INT64, [2])]
    _save(path, _graph([oh.make_node("Add", ["x", "n"], ["y"])], inputs, [_float("y", [2])]))


def _no_outputs(path: Path) -> None:
    _save(path, _graph([oh.make_node("Relu", ["x"], ["y"])], [_float("x", [2])], []))


def _future_opset(path: Path) -> None:
    _save(path, _graph([oh.make_node("Relu", ["x"], ["y"])], [_float("x", [2])], [_float("y", [2])], opset=999))


def _text(content: bytes) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(content)


def _mutate(seed: int) -> Callable[[Path], None]:
    """The small MLP with a handful of bytes overwritten at random (may or may not stay valid)."""

    def make(path: Path) -> None:
        data = bytearray(_mlp_bytes(path.parent))
        (path.parent / "source.mlp").unlink()
        rng = np.random.default_rng(seed)
        for position in rng.integers(0, len(data), size=8):
            data[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))

    return make


# Valid ONNX that cannot run: verbs that only read the graph (no --inputs) may succeed on these.
UNRUNNABLE = {"absurd-input-shape", "absurd-reshape", "initializer-without-data", "huge-attribute",
              "huge-string-attribute", "mixed-dtypes", "future-opset"}
# Known failures, reported: ``export`` writes a bundle (exit 0, a logged warning) for a model that
# onnxruntime cannot load, where it skips verification.
BROKEN: dict[str, Callable[[Path], object]] = {
    "truncated-1%": _truncate(0.01),
    "truncated-50%": _truncate(0.5),
    "truncated-99%": _truncate(0.99),
    "random-bytes": _text(np.random.default_rng(7).bytes(2048)),
    "json-text": _text(b'{"graph": {"node": []}}\n'),
    "zip-file": _text(b"PK\x03\x04" + bytes(60)),
    "cycle": write_cycle_model,
    "dangling-input": write_missing_initializer_model,
    "absurd-input-shape": _absurd_input_shape,
    "absurd-reshape": _absurd_reshape,
    "initializer-without-data": _initializer_without_data,
    "huge-attribute": _huge_attribute,
    "huge-string-attribute": _huge_string_attribute,
    "mixed-dtypes": _wrong_dtype_model,
    "no-outputs": _no_outputs,
    "future-opset": _future_opset,
}

MODEL_COMMANDS = sorted(c for c in COMMANDS if build_argv(c, Path("m.onnx"), Path("o")) is not None)


def _calib(folder: Path, name: str) -> Path:
    """Valid calibration data for the small MLP (input ``name``, 8 samples of 4 floats)."""
    path = folder / "calib.npz"
    arrays: dict[str, Any] = {name: np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)}
    np.savez(path, **arrays)
    return path


def _run_clean_failure(argv: list[str], folder: Path, watched: list[Path], capsys: pytest.CaptureFixture[str],
                       *, allow_success: bool = False) -> str:
    """Run the CLI; assert a clean failure (or allowed success); return stderr ("" on success)."""
    before_files = sorted(p.name for p in folder.iterdir())
    before = {p: digest(p) for p in watched}
    with deadline(TIMEOUT):
        code = main(argv)
    err = capsys.readouterr().err.strip()
    for path, sha in before.items():
        assert digest(path) == sha, f"{path.name} was modified"
    if code == 0 and allow_success:
        return ""
    assert code == 2, f"exit {code}: {err}"
    assert err.startswith("graphopt "), err
    assert "\n" not in err, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == before_files, "output or temporary files left behind"
    return err


def test_every_verb_is_covered() -> None:
    """Each verb either reads a model (and is fuzzed) or is known to read none."""
    assert set(UNBUILDABLE) <= set(_NEEDS_ARTEFACT), UNBUILDABLE
    verbs_without_model = {c[0] for c in COMMANDS if c not in MODEL_COMMANDS}
    assert {c[0] for c in MODEL_COMMANDS} >= {"inspect", "optimize", "verify", "bench", "encode"}
    assert "demo" in verbs_without_model


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_broken_model(command: tuple[str, ...], kind: str, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / f"{kind}.onnx"
    BROKEN[kind](bad)
    argv = build_argv(command, bad, tmp_path / "out.onnx", calib=_calib(tmp_path, "x"))
    assert argv is not None
    allow = kind in UNRUNNABLE and not _runs_model(command)
    err = _run_clean_failure(argv, tmp_path, [bad], capsys, allow_success=allow)
    if kind not in UNRUNNABLE:
        # The verb read the model and said what is wrong with it (it did not stop earlier).
        assert bad.name in err, f"the error does not name the model; add the verb's arguments to _VERB_ARGS: {err}"


def _runs_model(command: tuple[str, ...]) -> bool:
    """Verbs that take feeds (or calibration data) run the model; the others only read the graph."""
    return any(f in a.option_strings for a in COMMANDS[command]._actions for f in _FEED_OPTIONS)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_mutated_model(command: tuple[str, ...], seed: int, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "mutated.onnx"
    _mutate(seed)(bad)
    argv = build_argv(command, bad, tmp_path / "out.onnx", calib=_calib(tmp_path, "x"))
    assert argv is not None
    err = _run_clean_failure(argv, tmp_path, [bad], capsys, allow_success=True)
    if not err and (tmp_path / "out.onnx").is_file():
        onnx.checker.check_model(str(tmp_path / "out.onnx"))


def _feeds_str(path: Path) -> None:
    np.savez(path, x=np.array([["a", "b", "c", "d"]] * 2))


def _feeds_complex(path: Path) -> None:
    np.savez(path, x=np.ones((2, 4), np.complex128))


def _feeds_object(path: Path) -> None:
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))


def _feeds_absurd_rank(path: Path) -> None:
    np.savez(path, x=np.zeros((1,) * 32, np.float32))


def _feeds_odd_name(path: Path) -> None:
    arrays: dict[str, Any] = {"x\n../é": np.zeros((2, 4), np.float32)}
    np.savez(path, **arrays)


def _feeds_truncated(path: Path) -> None:
    np.savez(path, x=np.zeros((2, 4), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FEEDS: dict[str, Callable[[Path], None]] = {
    "str-dtype": _feeds_str,
    "complex-dtype": _feeds_complex,
    "pickled-objects": _feeds_object,
    "absurd-rank": _feeds_absurd_rank,
    "odd-name": _feeds_odd_name,
    "truncated": _feeds_truncated,
}
FEED_COMMANDS = sorted(c for c in MODEL_COMMANDS if build_argv(c, Path("m"), Path("o"), Path("f.npz")) is not None)


@pytest.mark.parametrize("kind", sorted(BAD_FEEDS))
@pytest.mark.parametrize("command", FEED_COMMANDS, ids=" ".join)
def test_bad_feeds(command: tuple[str, ...], kind: str, tmp_path: Path, mlp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    feeds = tmp_path / "feeds.npz"
    BAD_FEEDS[kind](feeds)
    argv = build_argv(command, mlp_path, tmp_path / "out.onnx", feeds)
    assert argv is not None
    _run_clean_failure(argv, tmp_path, [mlp_path, feeds], capsys)


_CORE_VERBS = {"inspect", "optimize", "verify", "bench", "encode", "export"}
ODD = "odd name é 名 $x;'\"`\\ -"


def _odd_names_model(path: Path) -> None:
    """The small MLP with every value, node and graph name full of odd characters."""
    model = onnx.load_from_string(_mlp_bytes(path.parent))
    (path.parent / "source.mlp").unlink()
    renamed: dict[str, str] = {}

    def rename(name: str) -> str:
        if name and name not in renamed:
            renamed[name] = f"{ODD}/{len(renamed)}\n{name}"
        return renamed.get(name, name)

    graph = model.graph
    graph.name = ODD
    for value in [*graph.input, *graph.output]:
        value.name = rename(value.name)
    for i, node in enumerate(graph.node):
        node.name = f"{ODD} node {i}"
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    _save(path, model)


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_odd_names_and_paths(command: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid model whose names (and file names) hold odd characters: success, or a clean error."""
    folder = tmp_path / "dir with spaces é"
    folder.mkdir()
    model = folder / "model $(x) 名.onnx"
    _odd_names_model(model)
    onnx.checker.check_model(str(model))
    out = folder / "out; é.onnx"
    argv = build_argv(command, model, out, calib=_calib(folder, onnx.load(str(model)).graph.input[0].name))
    assert argv is not None
    err = _run_clean_failure(argv, folder, [model], capsys, allow_success=True)
    if command[0] in _CORE_VERBS:
        assert not err, f"a valid model with odd names must work: {err}"
    if not err and out.is_file():
        onnx.checker.check_model(str(out))
        assert [i.name for i in onnx.load(str(out)).graph.input] == [i.name for i in onnx.load(str(model)).graph.input]


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
def test_unknown_option(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with deadline(TIMEOUT):
        assert main([*command, "--no-such-option-xyz"]) == 2
    assert "error:" in capsys.readouterr().err
