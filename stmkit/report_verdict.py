"""The report's opening "Verdict at this scale": run records -> stmkit.verdict's input -> a Markdown section.

Arms come from the training runs at the profile's main setting (LoRA at its learning rate, STM at tau 2.5, no
regulariser): ground truth, STM, STM with the end-of-turn token trained, random and low masking, each by its
training seed. Per-item measurements come from the 05_evaluate records (accuracy items, per-prompt KL drift,
gold-answer NLL), ||ΔW|| from the training records, sequence PPL per problem from the 01_score_tokens record (the
training sets) and the 03_generate_data record (every sampled answer, correct or not).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import drift, gold_nll, verdict
from .paper import paper_table
from .records import RunRecord
from .tables import save_table, to_markdown

ARM_OF_METHOD = {"gt": "ground truth", "stm": "STM", "random": "random", "low": "low", "dft": "DFT", "eaft": "EAFT",
                 "conflict": "conflict masking"}
SIBLING_ONLY = ("DFT", "EAFT", "conflict masking")  # arms that make the report show "STM and its siblings"
EOT_ARM = "STM, end-of-turn trained"


def arm_of(info: dict[str, Any]) -> str | None:
    """The verdict arm of a training run (None: not one of the verdict's arms)."""
    arm = ARM_OF_METHOD.get(info.get("method") or "")
    masking = info["record"].config.get("masking", {}) if info.get("record") else {}
    if arm == "STM" and masking.get("train_end_of_turn"):
        return EOT_ARM
    return arm


def seed_of(record: RunRecord) -> int:
    return int(record.config.get("training", {}).get("seed", 0))


def _records(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _accuracy_items(records: list[dict[str, Any]]) -> dict[str, float]:
    return {f"{r['task']}:{r['id']}": float(r["correct"]) for r in records}


def collect(sft: dict[str, dict[str, Any]], evaluate_records: list[RunRecord], score_record: RunRecord | None,
            main_setting: Any, generate_record: RunRecord | None = None) -> verdict.VerdictInput:
    """VerdictInput from the report's training-run infos, the evaluate run records, the score run record and the
    generate run record."""
    arms: dict[str, dict[int, str]] = {}
    duplicates: list[str] = []
    eot_masked: dict[str, list[float]] = {}
    for name, info in sorted(sft.items()):
        arm = arm_of(info)
        if arm and main_setting(info):
            seed = seed_of(info["record"])
            if seed in arms.get(arm, {}):
                duplicates.append(f"{name} (same arm and seed as {arms[arm][seed]})")
                continue
            arms.setdefault(arm, {})[seed] = name
            share = info["record"].results.masking.get("end_of_turn_masked_share")
            if share is not None:
                eot_masked.setdefault(arm, []).append(float(share))
    data = verdict.VerdictInput(arms=arms, paper=paper_numbers())
    data.notes = {"duplicates": duplicates,
                  "eot_masked": {arm: sum(v) / len(v) for arm, v in eot_masked.items()}}
    for rec in evaluate_records:
        res = rec.results
        target = res.target
        for label, tasks in res.accuracy.items():
            nontarget, tgt = {}, {}
            for spec, summary in tasks.items():
                if not summary.get("items_path") or not Path(summary["items_path"]).is_file():
                    continue
                records = _records(summary["items_path"])
                is_target = spec.split(":")[0] == target
                (tgt if is_target else nontarget).update(_accuracy_items(records))
                generated = [r for r in records if r.get("mode") == "generate"]
                if is_target and generated:  # answers that ran to max_new_tokens (never ended their turn)
                    data.unfinished[label] = (sum(not r.get("finished", True) for r in generated), len(generated))
            # several evaluate runs may score the same model: merge, never replace with what one of them lacks
            for key, values in (("accuracy", nontarget), ("target_accuracy", tgt)):
                if values:
                    data.items.setdefault((label, key), {}).update(values)
        for label, tasks in res.drift.items():
            kl = drift.per_prompt_kl(tasks)
            if kl:
                data.items.setdefault((label, "kl"), {}).update(kl)
        for label, tasks in res.gold_nll.items():
            for role, values in gold_nll.items_by_role(tasks).items():
                key = "target_gold_nll" if role == "target" else "gold_nll"
                data.items.setdefault((label, key), {}).update(values)
    data.delta_w = {name: float(info["delta_w"]) for name, info in sft.items() if info.get("delta_w") is not None}
    data.seq_ppl = dict(score_record.results.seq_ppl) if score_record else {}
    for source, ppl in (generate_record.results.sample_ppl if generate_record else {}).items():
        data.seq_ppl[verdict.EVERY_SAMPLE[source]] = ppl
    return data


def paper_numbers() -> dict[str, tuple[float | None, str]]:
    """The paper's numbers each claim corresponds to (MBPP target, Gemma 2 2B and Llama 3 8B), from its tables.

    Only accuracy is in the paper's units (relative change, %); the effect used for the MDE comparison is the
    smaller of the two models' magnitudes. Other measures show the paper's number as context only.
    """
    t2 = paper_table(2)
    t2 = t2[(t2["target_task"] == "MBPP") & t2["model"].isin(["Gemma 2 IT 2B", "Llama 3 8B Instruct"])]

    def value(method: str, metric: str) -> dict[str, float]:
        rows = t2[(t2["method"] == method) & (t2["metric"] == metric)]
        return {r["model"]: float(r["value"]) for _, r in rows.iterrows()}

    gt_bwt, stm_bwt = value("Baseline Fine-tuning", "BWT"), value("STM", "BWT")
    gt_ti, stm_ti = value("Baseline Fine-tuning", "TI"), value("STM", "TI")
    models = sorted(set(gt_bwt) & set(stm_bwt))

    def text(values: dict[str, float], what: str) -> str:
        return "; ".join(f"{what} {v:+.1f}% ({m.split(' Instruct')[0].replace(' IT', '')})" for m, v in values.items())

    bwt_gap = {m: stm_bwt[m] - gt_bwt[m] for m in models}
    ti_gap = {m: stm_ti[m] - gt_ti[m] for m in sorted(set(gt_ti) & set(stm_ti))}
    t3 = paper_table(3)
    t3 = t3[(t3["metric"] == "BWT")]
    high = t3[t3["config_as_printed"] == "STM tau=2.5, high"]["value_pct"]
    rand = t3[t3["config_as_printed"] == "STM tau=2.5, random"]["value_pct"]
    low = t3[t3["config_as_printed"] == "STM tau=2.5, low"]["value_pct"]
    out = {
        "gt_forgets:accuracy": (min(gt_bwt.values(), key=abs), text(gt_bwt, "BWT")),
        "gt_forgets": (None, text(gt_bwt, "BWT")),
        "stm_less:accuracy": (min(bwt_gap.values(), key=abs), text(bwt_gap, "BWT gap")),
        "stm_less": (None, text(bwt_gap, "BWT gap")),
        "stm_keeps_target:target_accuracy": (min(ti_gap.values(), key=abs), text(ti_gap, "TI gap")),
        "stm_keeps_target": (None, text(ti_gap, "TI gap")),
        "delta_w": (None, "||ΔW|| STM 0.55 vs GT 17.75 (Llama 3 8B); 0.45 vs 5.69 (Gemma 2 2B)"),
        "ppl_order": (None, "avg PPL GT 4.83, Rephrase 1.69, Self-Output 1.16 (Llama 3 8B, MBPP)"),
    }
    if len(high) and len(rand) and len(low):
        out["high_beats_controls"] = (None, f"BWT high {high.iloc[0]:+.1f}%, random {rand.iloc[0]:+.1f}%, "
                                            f"low {low.iloc[0]:+.1f}% (Gemma 2 2B)")
    return out


def section(data: verdict.VerdictInput, tables_dir: Path, model: str) -> str:
    """The Markdown of "Verdict at this scale" (and its CSV beside the other tables)."""
    rows = verdict.build(data)
    df = verdict.table(rows)
    save_table(df, "verdict", tables_dir, "Verdict at this scale: every claim the small model can test.")
    seeds = {arm: sorted(runs) for arm, runs in data.arms.items()}
    counts = {w: sum(r.verdict == w for r in rows) for w in ("holds", "contradicted", "inconclusive", "not measured")}
    notes = data.notes
    lines = [
        "## Verdict at this scale", "",
        f"Computed by `stmkit.verdict` from this profile's runs ({model}): estimates, intervals and verdict words "
        "come from the recorded measurements, none is typed. Each row: the estimate, a 95% interval (over training "
        "seeds and items for the per-item measures: crossed random effects, `stmkit.power`; over seeds only for "
        "||ΔW||; over problems only for sequence PPL, which involves no training), the smallest effect this design "
        "detects with 80% power (MDE), the paper's corresponding number, and the verdict: **holds** (the interval "
        "excludes zero on the paper's side), **contradicted** (on the other side) or **inconclusive** (spans zero, "
        "or one seed). The paper's numbers come from 2B-8B models: context, comparable in units only for accuracy. "
        f"{len(rows)} rows are each tested at 95%, so about one in twenty verdicts on a true null is expected by "
        "chance; read a row together with the other measures of its claim.", "",
        "Seeds per arm: " + (", ".join(f"{a} {s}" for a, s in seeds.items()) or "none") + ". "
        + ", ".join(f"{n} {w}" for w, n in counts.items()) + ".", "",
        "The three forgetting measures can disagree: training only on low-PPL tokens can sharpen the model, which "
        "moves its distribution (KL) without making gold answers less likely (gold-answer NLL), and accuracy near "
        "chance moves by a few items. In Table 3 the paper's 'low' control masked 67.8% of tokens, not STM's count.",
        "",
    ]
    if notes.get("duplicates"):
        lines += ["Left out (a second run of an arm and seed already counted): " + ", ".join(notes["duplicates"]), ""]
    lines += [to_markdown(df), ""]
    if data.unfinished:
        arm_of_label = {label: arm for arm, runs in data.arms.items() for label in runs.values()}
        parts = [f"{label} ({arm_of_label.get(label, 'base')}) {u}/{n}"
                 for label, (u, n) in sorted(data.unfinished.items()) if label in arm_of_label or label == verdict.BASE]
        eot = notes.get("eot_masked") or {}
        masked = ", ".join(f"{arm} {100 * share:.0f}%" for arm, share in sorted(eot.items()))
        lines += [
            "**Where answers stop.** Target answers that ran to `max_new_tokens` without ending their turn: "
            + ", ".join(parts) + "." + (f" Share of training answers whose end-of-turn token was masked, per arm "
                                         f"(mean over seeds): {masked}." if masked else "")
            + " The paper's released Llama 3 training data trains its end-of-turn token (median PPL about "
            "1.00003), so where plain STM masks it here, STM with the end-of-turn token trained is the closer "
            "match to the paper's effective condition; plain STM is the paper's stated method.", "",
        ]
    return "\n".join(lines)


def siblings_section(data: verdict.VerdictInput, tables_dir: Path, figures_dir: Path, plane: str | None = None,
                     quadrants: list[dict[str, Any]] | None = None, conflict_categories: str | None = None) -> str:
    """ "Beyond the paper: STM and its siblings" (empty when no sibling method ran): one table, one figure, and the
    mask run's probability x entropy plane (a figure path relative to the report) with its quadrant shares."""
    if not any(a in data.arms for a in SIBLING_ONLY):
        return ""
    from . import plots  # lazy: matplotlib (about 1 s) only when there is a figure to draw

    rows = verdict.siblings(data)
    df = verdict.table(rows).drop(columns=["paper"]).rename(columns={"claim": "question"})
    save_table(df, "siblings", tables_dir, "STM and its siblings against ground truth (same seeds, order, steps).")
    points = {}
    for arm in ("ground truth", *verdict.SIBLINGS):
        xs = {p["seed"]: p for p in verdict.per_seed_points(data, arm, "gold_nll")}
        ys = {p["seed"]: p for p in verdict.per_seed_points(data, arm, "target_gold_nll")}
        # the target gain is the fall of target gold NLL: flip its sign so up is better
        pts = [{"seed": s, "x": xs[s], "y": {"mean": -ys[s]["mean"], "low": -ys[s]["high"], "high": -ys[s]["low"]}}
               for s in sorted(set(xs) & set(ys))]
        if pts:
            points[arm] = pts
    lines = ["## Beyond the paper: STM and its siblings", "",
             "Methods that decide token by token how much of the supervised loss to keep, judged by the model's own "
             "prediction, trained with the same seeds, example order, steps and evaluation as ground truth: STM "
             "(this paper), STM with the end-of-turn token trained, DFT (each token's loss weighted by its own "
             "probability, arXiv 2508.05629, TRL's `loss_type=\"dft\"`), EAFT (weighted by the normalised top-20 "
             "entropy of the prediction, arXiv 2601.02151) and conflict masking (STM's mask restricted to tokens the "
             "model predicted with low entropy: EAFT's \"confident conflicts\"). Each row is the method minus ground "
             "truth, seed by seed, with a 95% interval over seeds and items and the smallest effect this design "
             "detects (MDE); none of these methods is in the paper, so there is no paper column.", ""]
    seeds = {a: sorted(data.arms[a]) for a in ("ground truth", *verdict.SIBLINGS) if a in data.arms}
    lines += ["Seeds: " + ", ".join(f"{a} {s}" for a, s in seeds.items()) + ".", ""]
    lines += [_siblings_summary(rows), "", to_markdown(df), ""]
    eot = {a: v for a, v in (data.notes.get("eot_masked") or {}).items() if a in seeds}
    if eot:
        lines += ["Share of training answers whose end-of-turn token was masked (mean over seeds): "
                  + ", ".join(f"{a} {100 * v:.0f}%" for a, v in eot.items())
                  + ". A method that masks it trains little on where to stop (see \"Where answers stop\").", ""]
    cut = {}
    for arm in seeds:
        pairs = [data.unfinished[label] for label in data.arms[arm].values() if label in data.unfinished]
        if pairs:
            cut[arm] = (sum(u for u, _ in pairs), sum(n for _, n in pairs))
    if cut:
        lines += ["Target answers that ran to `max_new_tokens` without ending their turn (all seeds): "
                  + ", ".join(f"{a} {u}/{n}" for a, (u, n) in cut.items()) + ".", ""]
    if points:
        fig = plots.siblings_plane(points, "forgetting: rise of non-target gold-answer NLL\nover the base (nats/token)",
                                   "target gain: fall of target gold-answer NLL\nbelow the base (nats/token)",
                                   "one point per method and training seed (bars: 95% over items)")
        files = plots.save_figure(fig, "siblings_forgetting_vs_gain", figures_dir)
        import matplotlib.pyplot as plt

        plt.close(fig)
        lines += [f"![STM and its siblings]({files[0].parent.name}/{files[0].name})", "",
                  "Left is less forgetting, up is more target gain. Target gold-answer NLL favours methods that train "
                  "on every token of answers written like the references (ground truth, DFT, EAFT) by construction; "
                  "the target task's accuracy in the table is its own measure.", ""]
    if plane:
        lines += ["Where the methods differ: the training tokens on the probability × entropy plane (02_mask_tokens). "
                  "STM masks everything left of the red line; conflict masking only the part of it below the "
                  "entropy gate (confident conflicts); EAFT weights every token by its height; DFT by its "
                  "horizontal position.", "", f"![probability x entropy]({plane})", ""]
        if quadrants:
            shares = "; ".join(f"{q['source']}: {100 * q['confident_conflict']:.1f}% confident conflicts of "
                               f"{100 * q['stm_masked']:.1f}% below STM's threshold ({q['tokens']} tokens)"
                               for q in quadrants)
            lines += [f"Shares of response tokens: {shares}.", ""]
    if conflict_categories:
        lines += ["Which kinds of token the confident conflicts are (as Figures 8-10 show for high-PPL tokens):", "",
                  f"![token categories of confident conflicts]({conflict_categories})", ""]
    return "\n".join(lines)


SHORT = {"gold_nll": "gold NLL", "accuracy": "accuracy", "kl": "KL drift", "target_gold_nll": "gold NLL",
         "target_accuracy": "accuracy"}


def _siblings_summary(rows: list[verdict.Row]) -> str:
    """Which methods mitigate forgetting here, and at what cost to the target: read off the computed rows."""
    short = {verdict.MEASURES[k][0]: v for k, v in SHORT.items()}
    by_arm: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        key = "less" if r.claim == verdict.CLAIMS["sibling_less"] else "target"
        by_arm.setdefault(r.arm, {"less": [], "target": []})[key].append(f"{short.get(r.measure, r.measure)} "
                                                                          f"{r.verdict}")
    parts = [f"**{arm}**: forgets less — {', '.join(v['less'])}; keeps the target gain — {', '.join(v['target'])}."
             for arm, v in by_arm.items()]
    return ("Read off the rows below (holds: the interval excludes zero on the method's side; contradicted: on the "
            "other side, worse than ground truth; inconclusive: spans zero or one seed). " + " ".join(parts))
