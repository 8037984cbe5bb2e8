"""Saving and loading predictors: one zip file.

Layout: ``meta.json`` (``format: graphopt-predictor``, ``version``, the feature spec, each head's
model kind, ensemble size and seed, training info), and per head ``<head>.npz`` (arrays),
``<head>.json`` (numbers and strings) and, for tree models, ``<head>.pkl`` (the fitted
scikit-learn estimators, pickled: load predictor files only from sources you trust). Files are
written atomically; a file of another format or version is refused with one line.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError
from graphopt.predict.dataset import FeatureSpec
from graphopt.predict.models import model_from_state
from graphopt.predict.predictor import Predictor

__all__ = ["FORMAT", "VERSION", "load_predictor", "save_predictor"]

FORMAT = "graphopt-predictor"
VERSION = 1


def save_predictor(predictor: Predictor, path: str | os.PathLike[str]) -> Path:
    """Write ``predictor`` to ``path`` (temp file + rename); return the path."""
    from graphopt._io import atomic_output

    out = Path(path)
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "spec": predictor.spec.to_dict(),
                            "info": predictor.info, "heads": {}}
    with atomic_output(out) as tmp, zipfile.ZipFile(tmp / out.name, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, model in predictor.heads.items():
            arrays: dict[str, Any] = {}
            scalars: dict[str, Any] = {}
            objects: dict[str, Any] = {}
            for key, value in model.state().items():
                if isinstance(value, np.ndarray):
                    arrays[key] = value
                elif isinstance(value, (int, float, str, bool)) or value is None:
                    scalars[key] = value
                else:
                    objects[key] = value
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            archive.writestr(f"{name}.npz", buffer.getvalue())
            archive.writestr(f"{name}.json", json.dumps(scalars))
            if objects:
                archive.writestr(f"{name}.pkl", pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL))
            meta["heads"][name] = {"kind": model.kind, "members": model.members, "seed": model.seed}
        archive.writestr("meta.json", json.dumps(meta, indent=2, default=_json_default))
    return out


def load_predictor(path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> Predictor:
    """Read a predictor written by :func:`save_predictor`; :class:`InputError` for anything else."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        with zipfile.ZipFile(p) as archive:
            meta = json.loads(archive.read("meta.json"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise InputError(f"{p}: not a graphopt predictor file")
            if meta.get("version") != VERSION:
                raise InputError(f"{p}: predictor format version {meta.get('version')!r} is not supported "
                                 f"(this graphopt reads version {VERSION}); retrain it")
            heads = {}
            names = set(archive.namelist())
            for name, head in meta["heads"].items():
                state: dict[str, Any] = json.loads(archive.read(f"{name}.json"))
                with np.load(io.BytesIO(archive.read(f"{name}.npz"))) as arrays:
                    state.update({key: arrays[key] for key in arrays.files})
                if f"{name}.pkl" in names:
                    state.update(pickle.loads(archive.read(f"{name}.pkl")))
                heads[name] = model_from_state(head["kind"], state, members=int(head["members"]),
                                               seed=int(head["seed"]))
            spec = FeatureSpec.from_dict(meta["spec"])
    except InputError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, pickle.UnpicklingError,
            AttributeError, ImportError) as exc:
        raise InputError(f"{p}: not a readable graphopt predictor file ({type(exc).__name__}: {exc})") from exc
    return Predictor(spec, heads, meta.get("info"), cache_dir=cache_dir)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
