"""The analysis of the paper study (``paper_report.py``): every number the report says.

:func:`analyse` turns the finished runs, the probes, the lexical corpus' runs and nEMO's
text-only check into one JSON-ready dict (``paper_results.json``): per corpus each system's
summary, the paired tests of :data:`paper_stats.PAIRS` (Holm-adjusted), the claims' outcomes and
where CMA should be on by default; the lexical corpus' systems and tests; and the verdict table
(one row per claim of the paper, with the paper's own numbers beside the ones here). The number
formats of its texts (and of the report's) are here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accuracy import CORPORA
from paper_stats import (
    LEXICAL_PAIRS,
    MAIN_SYSTEMS,
    PAIRS,
    RULE,
    adjust,
    outcome,
    paired_test,
    probe_outcome,
    summarise_system,
    verdict,
    whole_outcome,
)

CORPUS_NAMES = {corpus: recipe for corpus, (recipe, _) in CORPORA.items()}


# --------------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------------


def _probe_json(probe: dict | None) -> dict[str, Any]:
    if not probe:
        return {}
    return {name: round(b["ua"], 4) for name, b in probe["blocks"].items()}


def analyse(
    runs: dict[str, dict[str, dict[int, dict]]],
    probes: dict[str, dict | None],
    scratch_probes: dict[str, dict | None],
    lexical: dict[str, Any],
    nemo_text: dict | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Everything the report says, as one JSON-ready dict (``paper_results.json``)."""
    n_boot = int(meta.get("n_boot", 5000))
    corpora: dict[str, Any] = {}
    all_tests: list[dict] = []
    outcomes: dict[str, dict[str, str | None]] = {c: {} for c in runs}
    not_run: list[str] = []
    wall = 0.0
    for corpus, systems in runs.items():
        summaries, ensembles = {}, {}
        for system, by_seed in systems.items():
            summaries[system], ensembles[system] = summarise_system(by_seed, n_boot=2000)
            wall += summaries[system].get("wall_time_s") or 0.0
            for seed, run in by_seed.items():
                if run["status"] != "done":
                    not_run.append(f"{corpus} {system} seed {seed} ({run['status']})")
        tests = [
            test
            for a, b in PAIRS
            if (test := common_seed_test(corpus, systems, ensembles, a, b, n_boot)) is not None
        ]
        adjust(tests)
        all_tests += tests
        by_pair = {(t["a"], t["b"]): t for t in tests}
        probe = probes.get(corpus)
        probe_claim, probe_detail = probe_outcome(probe, n_boot)
        outcomes[corpus] = {
            "probe": probe_claim,
            "mmf": outcome(by_pair.get(("full", "no_mmf"))),
            "cma": outcome(by_pair.get(("full", "no_cma"))),
            "pretraining": outcome(by_pair.get(("full", "from_scratch"))),
            "whole": whole_outcome(tests, summaries),
        }
        cma_test = by_pair.get(("full", "no_cma"))
        corpora[corpus] = {
            "name": CORPUS_NAMES.get(corpus, corpus),
            "n_folds": meta["n_folds"].get(corpus),
            "folds_used": min(meta["n_folds"].get(corpus) or 0, meta.get("max_folds") or 10**6),
            "recipe_fusion_blocks": meta.get("recipe_fusion_blocks", {}).get(corpus),
            "probe": _probe_json(probe),
            "probe_ci": (
                {n: [b["ci_low"], b["ci_high"]] for n, b in probe["blocks"].items()}
                if probe
                else {}
            ),
            "probe_ua_mean_folds": (
                {n: b["ua_mean_folds"] for n, b in probe["blocks"].items()} if probe else {}
            ),
            "probe_best": probe_detail,
            "probe_inner_choice": probe.get("inner_choice") if probe else None,
            "best_block_used": probe.get("chosen_block") if probe else None,
            "probe_wall_time_s": probe.get("wall_time_s") if probe else None,
            "scratch_probe": _probe_json(scratch_probes.get(corpus)),
            "systems": summaries,
            "outcomes": outcomes[corpus],
            "cma_default": cma_recommendation(corpus, cma_test, nemo_text),
        }
        wall += (probe or {}).get("wall_time_s") or 0.0

    lexical_out = analyse_lexical(lexical, n_boot)
    for summary in lexical_out["systems"].values():
        wall += summary.get("wall_time_s") or 0.0
    for system, by_seed in (lexical.get("runs") or {}).items():
        for seed, run in by_seed.items():
            if run["status"] != "done":
                not_run.append(f"lexical {system} seed {seed} ({run['status']})")
    return {
        "meta": {k: v for k, v in meta.items() if k != "failures"},
        "rule": RULE,
        "corpora": corpora,
        "tests": all_tests,
        "lexical": lexical_out,
        "nemo_text": nemo_text,
        "verdicts": verdicts(corpora, outcomes, all_tests),
        "not_run": not_run,
        "failed": meta.get("failures", []),
        "wall_time_s": wall,
    }


def common_seed_test(
    corpus: str,
    systems: dict[str, dict[int, dict]],
    ensembles: dict[str, dict | None],
    a: str,
    b: str,
    n_boot: int,
    group_of: Callable[[str, dict], str] | None = None,
) -> dict[str, Any] | None:
    """The paired test of ``a`` and ``b`` on the seeds both finished (``seeds``), None when
    they share none: a system with more finished seeds would otherwise compare its larger
    seed ensemble, which is stronger by itself, against the other's smaller one."""
    if ensembles.get(a) is None or ensembles.get(b) is None:
        return None
    done = {s: {k for k, run in systems[s].items() if run["status"] == "done"} for s in (a, b)}
    common = sorted(done[a] & done[b])
    if not common:
        return None
    chosen = {
        s: ensembles[s]
        if done[s] == set(common)
        else summarise_system({k: systems[s][k] for k in common}, group_of, n_boot=100)[1]
        for s in (a, b)
    }
    return {"corpus": corpus, "seeds": common, **paired_test(a, chosen[a], b, chosen[b], n_boot)}


def analyse_lexical(lexical: dict[str, Any], n_boot: int) -> dict[str, Any]:
    """The controlled corpus: each system's UA (bootstrap over test sentences: its two test
    voices are too few to resample) and the paired tests between them."""
    text = lexical.get("text") or {}
    group = (lambda utt, info: text.get(utt, utt)) if text else None
    summaries, ensembles = {}, {}
    runs = lexical.get("runs") or {}
    for system, by_seed in runs.items():
        summaries[system], ensembles[system] = summarise_system(by_seed, group, n_boot=2000)
    tests = [
        test
        for a, b in LEXICAL_PAIRS
        if (test := common_seed_test("lexical", runs, ensembles, a, b, n_boot, group)) is not None
    ]
    adjust(tests)
    return {"systems": summaries, "tests": tests, "text_only": lexical.get("text_only")}


def cma_recommendation(corpus: str, test: dict | None, nemo_text: dict | None) -> dict[str, str]:
    """Where CMA should be on by default, from ``full`` against ``no_cma`` on that corpus."""
    if test is None:
        return {"default": "undecided", "why": "full and no_cma were not both run"}
    effect = (
        f"CMA changed UA by {test['delta_ua']:+.1f} points "
        f"(95 % CI {test['ci_low']:+.1f} to {test['ci_high']:+.1f}, Holm p {_p(test['p_value'])})"
    )
    if outcome(test) == "+":
        return {"default": "on", "why": f"{effect}: a significant gain"}
    why = f"{effect}: no significant gain, and CMA costs an attention layer over the PPG"
    if corpus == "nemo" and nemo_text:
        why += (
            f"; nEMO's transcripts carry no label (text-only UA {nemo_text['ua_pooled']:.1f}, "
            f"chance {nemo_text['chance']:.1f})"
        )
    else:
        why += "; its sentences are spoken in every emotion, so the words carry none"
    return {"default": "off", "why": why}


PAPER = {
    "probe": "best single-block probe at block 9 of 12 (relative depth 0.75), WA 67.80",
    "mmf": "WA 76.42 with MMF vs 74.29 with the last block alone (UA 3.42 lower)",
    "cma": "WA 76.42 with CMA vs 74.71 without",
    "pretraining": "WA 76.42 pretrained vs 57.57 with the backbone trained from scratch",
    "whole": "MMF + CMA best: WA 76.42 / UA 77.71 / WF1 76.20, above every ablation",
}
CLAIMS = {
    "probe": "1. Emotion peaks in the middle-upper encoder blocks, not at the output",
    "mmf": "2. Multi-block fusion (MMF) beats the last block alone",
    "cma": "3. Cross-modal attention (CMA) to the PPG helps",
    "pretraining": "4. ASR pretraining is what makes it work",
    "whole": "5. The whole system (MMF + CMA) is best",
}


def _here(claim: str, corpus: str, entry: dict, tests: dict) -> str:
    name = entry["name"]
    mark = entry["outcomes"].get(claim)
    if claim == "probe":
        d = entry["probe_best"]
        if not d:
            return f"{name}: not run"
        return (
            f"{name}: block {d['best_block']} of {d['n_blocks']} (depth {d['depth']:.2f}), "
            f"{d['delta_ua']:+.1f} over the output ({mark})"
        )
    pair = {"mmf": "no_mmf", "cma": "no_cma", "pretraining": "from_scratch"}.get(claim)
    if pair:
        t = tests.get((corpus, "full", pair))
        if t is None:
            return f"{name}: not run"
        return f"{name}: {t['delta_ua']:+.1f} UA, p {t['p_value']:.2g} ({mark})"
    systems = entry["systems"]
    against = [t for (c, a, _), t in tests.items() if c == corpus and a == "full"]
    against = [t for t in against if t["b"] in MAIN_SYSTEMS]
    if mark is None or not against:
        return f"{name}: not run"
    top = max(against, key=lambda t: systems[t["b"]].get("ua_ensemble") or -1.0)
    return (
        f"{name}: full {systems['full']['ua_ensemble']:.1f}, strongest other {top['b']} "
        f"{systems[top['b']]['ua_ensemble']:.1f} ({top['delta_ua']:+.1f}, p {top['p_value']:.2g}) "
        f"({mark})"
    )


def verdicts(
    corpora: dict[str, dict], outcomes: dict[str, dict], tests: list[dict]
) -> list[dict[str, Any]]:
    """The verdict table: one row per claim of the paper, and the IEMOCAP row."""
    by_key = {(t["corpus"], t["a"], t["b"]): t for t in tests}
    rows = []
    for claim, text in CLAIMS.items():
        per_corpus = {c: outcomes[c].get(claim) for c in corpora}
        rows.append(
            {
                "claim": text,
                "paper": PAPER[claim],
                "here": "; ".join(_here(claim, c, corpora[c], by_key) for c in corpora),
                "per_corpus": per_corpus,
                "verdict": verdict(list(per_corpus.values())),
            }
        )
    rows.append(
        {
            "claim": "6. The paper's IEMOCAP numbers (4 classes, leave-one-session-out)",
            "paper": "WA 76.42 / UA 77.71 / WF1 76.20",
            "here": "IEMOCAP is licensed and absent here: no comparison on its data",
            "per_corpus": {},
            "verdict": "not testable here",
        }
    )
    return rows


# --------------------------------------------------------------------------------------------------
# Number formats
# --------------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _ci(low: float | None, high: float | None, sign: bool = False) -> str:
    if low is None or high is None:
        return ""
    return f" [{_f(low, 1, sign)}, {_f(high, 1, sign)}]"
