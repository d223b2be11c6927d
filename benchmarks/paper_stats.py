"""The statistics and decision rules of the paper study's analysis (``paper_report.py``).

Pure functions of the finished runs that ``paper.py`` reads (no training):
:func:`summarise_system` gives a system's UA per fold and seed, and the seed ensemble (the mean
of the seeds' class probabilities per utterance, then the most probable class) with its pooled
UA and a 95 % speaker-bootstrap interval; :func:`paired_test` compares two systems on the same
utterances (the paired speaker bootstrap of the ensembles' UA difference with its effect, 95 %
interval and p, McNemar on the ensembles' pooled predictions, and the Wilcoxon signed-rank test
over the seed-averaged fold UAs), and :func:`adjust` adds Holm-adjusted p-values over the tests
of one corpus; :func:`outcome`, :func:`verdict`, :func:`probe_outcome` and
:func:`whole_outcome` are the decision rule of the verdict table (see :data:`RULE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from qieemo_lobes.stats import (
    holm,
    mcnemar,
    paired_bootstrap,
    speaker_bootstrap_ci,
    unweighted_accuracy,
    wilcoxon_folds,
)

ALPHA = 0.05
# The paired comparisons of every corpus: (a, b), the effect is UA(a) - UA(b).
PAIRS = (
    ("full", "no_cma"),
    ("full", "no_mmf"),
    ("full", "best_block"),
    ("full", "from_scratch"),
    ("no_cma", "best_block"),
    ("full", "from_scratch_trained"),
)
LEXICAL_PAIRS = (("full", "blocks_only"), ("full", "ppg_only"), ("blocks_only", "ppg_only"))
MAIN_SYSTEMS = ("full", "no_cma", "no_mmf", "best_block", "from_scratch")
RULE = (
    "A comparison is significant when the paired speaker bootstrap and McNemar's test, each "
    "Holm-adjusted over the tests of its corpus, are both below 0.05. Per corpus a claim scores "
    "+ (significant in the paper's direction), - (significant against it) or 0 (neither). "
    "Over the n corpora where it could be measured the claim **holds** when + on at least 60 % "
    "of them (3 of 5) and - on none, **does not hold** when + on none, and is **mixed** "
    "otherwise; **not testable here** when n = 0. Claim 1 (where emotion lives) scores + when the "
    "best probe block lies strictly above the middle and below the top of the encoder (relative "
    "depth in (0.5, 1): blocks 4-5 of 6, as 9 of 12 is 0.75) and beats the final output "
    "(paired speaker bootstrap, p < 0.05), - when the best block is in the lower half or the "
    "final output is better, else 0. Claim 5 (the whole is best) scores + when the full system "
    "is significantly better than the strongest other system (by ensemble UA) among no_cma, "
    "no_mmf, best_block and from_scratch, - when any of them is significantly better than it, "
    "else 0."
)


# --------------------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------------------


def summarise_system(
    by_seed: Mapping[int, dict],
    group_of: Callable[[str, dict], str] | None = None,
    n_boot: int = 2000,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A system's numbers over its finished seeds, and its ensemble (for the paired tests).

    Arguments
    ---------
    by_seed : mapping
        ``{seed: run}`` as ``paper.read_run`` returns (``status``, ``folds`` ``{k: fold}``).
    group_of : callable, optional
        ``group_of(utterance, info)``: the bootstrap group of an utterance (default its speaker).
    n_boot : int
        Bootstrap draws of the interval.

    Returns
    -------
    tuple
        The summary (JSON-ready: ``status``, ``seeds_done``, ``ua_mean`` (mean over seeds of the
        mean UA over folds), ``ua_std_seeds``, ``ua_seeds``, ``ua_folds`` (per fold, mean over
        seeds), ``wa_mean``, ``ua_ensemble`` with ``ci_low``/``ci_high``, ``ua_pooled_seeds``,
        ``mmf_weights``, ``cma_gates``, ``settings``, ``wall_time_s``) and the ensemble
        (``utterances``, ``y``, ``pred``, ``groups``, ``folds``, ``ua_folds``) or None.
    """
    group_of = group_of or (lambda utt, info: info["speaker"])
    statuses = [run["status"] for run in by_seed.values()]
    done = {seed: run for seed, run in sorted(by_seed.items()) if run["status"] == "done"}
    if done and len(done) == len(by_seed):
        status = "done"
    elif done or "partial" in statuses:
        status = "partial"
    else:
        status = "not run"
    summary: dict[str, Any] = {
        "status": status,
        "seeds_planned": sorted(by_seed),
        "seeds_done": sorted(done),
        "ua_mean": None,
        "ua_folds": None,
    }
    partial = {seed: len(r["folds"]) for seed, r in by_seed.items() if r["status"] == "partial"}
    if partial:
        summary["partial_folds"] = {str(s): n for s, n in partial.items()}
    if not done:
        return summary, None
    folds = sorted(set.intersection(*(set(run["folds"]) for run in done.values())))
    ua = {seed: [run["folds"][k]["ua"] for k in folds] for seed, run in done.items()}
    wa = {seed: [run["folds"][k]["wa"] for k in folds] for seed, run in done.items()}
    ua_seeds = [float(np.mean(v)) for v in ua.values()]
    ua_folds = [float(np.mean([ua[s][i] for s in done])) for i in range(len(folds))]
    first = next(iter(done.values()))
    classes = first["folds"][folds[0]]["classes"]
    utterances: dict[str, dict] = {}
    for k in folds:
        for utt, info in first["folds"][k]["utterances"].items():
            utterances[utt] = info
    common = [
        utt
        for utt in utterances
        if all(any(utt in run["folds"][k]["utterances"] for k in folds) for run in done.values())
    ]
    probs = np.zeros((len(common), len(classes)))
    pooled_seeds = []
    y = np.array([utterances[u]["true"] for u in common])
    for run in done.values():
        merged = {u: i for k in folds for u, i in run["folds"][k]["utterances"].items()}
        seed_probs = np.stack([merged[u]["probs"] for u in common])
        probs += seed_probs
        pooled_seeds.append(
            unweighted_accuracy(y, np.array(classes)[seed_probs.argmax(1)], labels=classes)
        )
    pred = np.array(classes)[probs.argmax(1)]
    groups = np.array([str(group_of(u, utterances[u])) for u in common])
    if len(set(groups)) >= 2:
        ua_e, low, high = speaker_bootstrap_ci(y, pred, groups, n_boot=n_boot, seed=0)
    else:
        ua_e, low, high = unweighted_accuracy(y, pred), None, None
    weights: dict[str, list[float]] = {}
    gates: dict[str, list[list[float]]] = {"attn": [], "ffn": []}
    wall = 0.0
    for run in done.values():
        for k in folds:
            fold = run["folds"][k]
            for block, w in (fold.get("weights") or {}).items():
                weights.setdefault(block, []).append(w)
            if fold.get("gates"):
                gates["attn"].append(fold["gates"]["attn"])
                gates["ffn"].append(fold["gates"]["ffn"])
            wall += fold.get("wall_time_s") or 0.0
    settings = first.get("settings") or {}
    summary.update(
        {
            "folds": [int(k) if str(k).isdigit() else k for k in folds],
            "ua_mean": float(np.mean(ua_seeds)),
            "ua_std_seeds": float(np.std(ua_seeds)),
            "ua_seeds": ua_seeds,
            "ua_folds": ua_folds,
            "wa_mean": float(np.mean([np.mean(v) for v in wa.values()])),
            "ua_ensemble": float(ua_e),
            "ci_low": None if low is None else float(low),
            "ci_high": None if high is None else float(high),
            "ua_pooled_seeds": pooled_seeds,
            "n_utterances": len(common),
            "mmf_weights": {
                b: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                for b, v in sorted(weights.items(), key=lambda kv: int(kv[0]))
            }
            or None,
            "cma_gates": (
                {
                    name: {
                        "mean": np.mean(values, axis=0).round(6).tolist(),
                        "std": np.std(values, axis=0).round(6).tolist(),
                    }
                    for name, values in gates.items()
                }
                if gates["attn"]
                else None
            ),
            "settings": {
                k: settings[k]
                for k in ("fusion_blocks", "use_mmf", "use_cma", "encoder_source", "encoder")
                if k in settings
            },
            "wall_time_s": wall,
        }
    )
    ensemble = {
        "utterances": common,
        "y": y,
        "pred": pred,
        "groups": groups,
        "folds": {u: utterances[u]["fold"] for u in common},
        "ua_folds": dict(zip([str(k) for k in folds], ua_folds, strict=True)),
    }
    return summary, ensemble


# --------------------------------------------------------------------------------------------------
# Tests, outcomes, verdicts
# --------------------------------------------------------------------------------------------------


def paired_test(
    name_a: str, ens_a: dict, name_b: str, ens_b: dict, n_boot: int = 5000
) -> dict[str, Any]:
    """System a against b on their common utterances; effects are ``UA(a) - UA(b)``.

    Returns ``a``, ``b``, ``delta_ua`` (ensemble, pooled), ``ci_low``, ``ci_high``, ``p_raw``
    (paired speaker bootstrap), ``mcnemar_b`` (a right, b wrong), ``mcnemar_c``, ``mcnemar_p``,
    ``wilcoxon_delta`` (mean over folds of the seed-averaged fold UAs), ``wilcoxon_p``,
    ``n_utterances``, ``n_groups``, ``n_folds``.
    """
    index_b = {u: i for i, u in enumerate(ens_b["utterances"])}
    common = [(i, index_b[u]) for i, u in enumerate(ens_a["utterances"]) if u in index_b]
    ia = np.array([i for i, _ in common], dtype=int)
    ib = np.array([j for _, j in common], dtype=int)
    y, groups = ens_a["y"][ia], ens_a["groups"][ia]
    pred_a, pred_b = ens_a["pred"][ia], ens_b["pred"][ib]
    boot = paired_bootstrap(y, pred_b, pred_a, groups, n_boot=n_boot, seed=0)
    mc = mcnemar(y, pred_a, pred_b)
    folds = [k for k in ens_a["ua_folds"] if k in ens_b["ua_folds"]]
    wil = wilcoxon_folds(
        [ens_b["ua_folds"][k] for k in folds], [ens_a["ua_folds"][k] for k in folds]
    )
    return {
        "a": name_a,
        "b": name_b,
        "delta_ua": boot["delta_ua"],
        "ci_low": boot["ci_low"],
        "ci_high": boot["ci_high"],
        "p_raw": boot["p_value"],
        "mcnemar_b": mc["b"],
        "mcnemar_c": mc["c"],
        "mcnemar_p": mc["p_value"],
        "wilcoxon_delta": wil["delta_mean"],
        "wilcoxon_p": wil["p_value"],
        "n_utterances": len(common),
        "n_groups": len(set(groups.tolist())),
        "n_folds": len(folds),
    }


def adjust(tests: list[dict]) -> list[dict]:
    """Holm-adjusted p-values over ``tests`` (one corpus): ``p_value`` (the bootstrap's, the
    one the JSON's ``p_value`` means), ``mcnemar_p_holm``, and ``significant`` (both < 0.05)."""
    if not tests:
        return tests
    boot = holm([t["p_raw"] for t in tests])
    mc = holm([t["mcnemar_p"] for t in tests])
    for test, p_boot, p_mc in zip(tests, boot, mc, strict=True):
        test["p_value"] = p_boot
        test["mcnemar_p_holm"] = p_mc
        test["significant"] = bool(p_boot < ALPHA and p_mc < ALPHA)
    return tests


def outcome(test: dict | None) -> str | None:
    """``+`` / ``-`` / ``0`` of one test in its a-better-than-b direction; None without a test.

    Example
    -------
    >>> outcome({"significant": True, "delta_ua": 2.0}), outcome({"significant": False, "delta_ua": 9.0})
    ('+', '0')
    """
    if test is None:
        return None
    if not test["significant"]:
        return "0"
    return "+" if test["delta_ua"] > 0 else "-"


def verdict(outcomes: Sequence[str | None]) -> str:
    """The verdict of one claim from its per-corpus outcomes (:data:`RULE`).

    Example
    -------
    >>> verdict(["+", "+", "+", "0", "0"]), verdict(["+", "+", "+", "-", "+"])
    ('holds', 'mixed')
    >>> verdict(["0", "-", "0"]), verdict([None, None]), verdict(["+", "0", "0", "0", "0"])
    ('does not hold', 'not testable here', 'mixed')
    """
    valid = [o for o in outcomes if o in ("+", "-", "0")]
    if not valid:
        return "not testable here"
    plus, minus = valid.count("+"), valid.count("-")
    if plus >= math.ceil(0.6 * len(valid)) and minus == 0:
        return "holds"
    if plus == 0:
        return "does not hold"
    return "mixed"


def probe_outcome(probe: dict | None, n_boot: int = 5000) -> tuple[str | None, dict | None]:
    """Claim 1 for one corpus: the outcome and ``{best, depth, final, delta_ua, ci, p}``."""
    if not probe:
        return None, None
    n = int(probe["n_blocks"])
    blocks = probe["blocks"]
    best = max(range(1, n + 1), key=lambda k: (blocks[str(k)]["ua"], -k))
    labels = np.array(probe["labels"])
    test = paired_bootstrap(
        labels,
        np.array(probe["predictions"]["final"]),
        np.array(probe["predictions"][str(best)]),
        np.array(probe["speakers"]),
        n_boot=n_boot,
        seed=0,
    )
    depth = best / n
    detail = {
        "best_block": best,
        "n_blocks": n,
        "depth": depth,
        "best_ua": blocks[str(best)]["ua"],
        "final_ua": blocks["final"]["ua"],
        "delta_ua": test["delta_ua"],
        "ci_low": test["ci_low"],
        "ci_high": test["ci_high"],
        "p_value": test["p_value"],
    }
    if not 0.5 < depth < 1 or test["delta_ua"] <= 0:
        return "-", detail
    return ("+" if test["p_value"] < ALPHA else "0"), detail


def whole_outcome(tests: list[dict], systems: dict[str, dict]) -> str | None:
    """Claim 5 for one corpus (:data:`RULE`)."""
    against = {t["b"]: t for t in tests if t["a"] == "full" and t["b"] in MAIN_SYSTEMS}
    if not against:
        return None
    if any(outcome(t) == "-" for t in against.values()):
        return "-"
    strongest = max(against, key=lambda b: systems[b].get("ua_ensemble") or -1.0)
    return "+" if outcome(against[strongest]) == "+" else "0"
