"""One catalogue of the paper's outputs: id, title, what a run must provide, and whether the kit can make it offline.

The report's section titles and "needs ..." messages, the sweeps' `for:` lists, the profiles' `covers:` lists and the
README's map are all checked against this list (tests/test_catalogue.py): an output renamed or added in one place
and not the others fails a test, not a reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from .paper import PAPER_FIGURES


def _figure(n: int) -> str:
    """The paper's own caption (stmkit/data/paper) where the kit's figure shows what the paper's shows."""
    return f"Figure {n}. {PAPER_FIGURES[n]}"


@dataclass(frozen=True)
class PaperOutput:
    id: str  # table01 ... table21, fig01 ... fig14
    title: str  # as the report and the README map print it
    needs: str = ""  # what a profile must run to make it (the report's "Not produced by this profile: needs ...")
    unavailable: str = ""  # why the kit cannot make it offline ("" = it can)


CATALOGUE: tuple[PaperOutput, ...] = (
    PaperOutput('table01', 'Table 1. Sequence PPL of training data by source',
                'a 01_score_tokens run'),
    PaperOutput('table02', 'Table 2. TI, BWT and data cost: Baseline, Self-Output, Rephrase, STM',
                'fine-tuning runs (04_sft: ground truth, STM, Self-Output, Rephrase) evaluated by 05_evaluate'),
    PaperOutput('table03', 'Table 3. Masking high/random/low-PPL tokens and the tau sweep (MBPP)',
                'STM high/random/low and tau-sweep runs evaluated by 05_evaluate'),
    PaperOutput('table04', 'Table 4. Full fine-tuning, LoRA and DoRA, with and without STM',
                'full/LoRA/DoRA runs with and without STM, evaluated'),
    PaperOutput('table05', 'Table 5. Learning-rate sweep, Baseline vs STM',
                'a learning-rate sweep of ground truth and STM runs, evaluated'),
    PaperOutput('table06', 'Table 6. Self-BLEU of MATH samples after MBPP training',
                'a 05_evaluate run with self_bleu_task set (Self-BLEU of answers sampled on a non-target task)'),
    PaperOutput('table07', 'Table 7. ||ΔW|| of the LoRA update per training-data source',
                'fine-tuning runs per training-data source (04_sft) with their ||ΔW||'),
    PaperOutput('table08', 'Table 8. Regularisation baselines vs STM (||ΔW||, BWT, TI)',
                'a 06_regularization run (evaluated by 05_evaluate for BWT/TI)'),
    PaperOutput('table09', 'Table 9. IFEval after MBPP training',
                'an evaluation (05_evaluate) with ifeval in eval.tasks, of the base model and ground-truth and STM '
                'runs (offline: the IFEval stand-in)'),
    PaperOutput('table10', 'Table 10. AdvBench refusal after MBPP training',
                unavailable='AdvBench and a harmfulness judge are not available offline'),
    PaperOutput('table11', 'Table 11. OLMo 2 7B and Gemma 2 9B: Baseline vs STM',
                "the paper profile's OLMo 2 7B and Gemma 2 9B runs"),
    PaperOutput('table12', 'Table 12. Raw accuracies on every task',
                'evaluations (05_evaluate) of the base model and the fine-tuned runs'),
    PaperOutput('table13', 'Table 13. MATH target: tau sweep',
                'MATH-target tau-sweep runs (04_sft with data.target math at several masking.tau), evaluated'),
    PaperOutput('table14', 'Table 14. MATH target: STM, DPF, STM+DPF (Llama 3 8B)',
                'STM, DPF and STM+DPF runs (04_sft method dpf / stm+dpf with reference_run), evaluated'),
    PaperOutput('table15', 'Table 15. Masking ablation and tau sweep (Llama 3 8B)',
                "the paper profile's Llama 3 8B ablation runs"),
    PaperOutput('table16', 'Table 16. LoRA and DoRA with and without STM (Llama 3 8B)',
                "the paper profile's Llama 3 8B LoRA/DoRA runs"),
    PaperOutput('table17', 'Table 17. Data-preparation cost per method',
                'a 03_generate_data run'),
    PaperOutput('table18', 'Table 18. MATH target: STM, DPF, STM+DPF (Gemma 2 2B)',
                'MATH-target STM, DPF and STM+DPF runs of Gemma 2 2B (profile `paper`)'),
    PaperOutput('table19', 'Table 19. Continual learning: MATH then MBPP with STM',
                'a continual chain: an STM run on MATH, then a 04_sft run with init_run set to it, both evaluated'),
    PaperOutput('table20', 'Table 20. Self-Output correctness ablation (Llama 3 8B)',
                'Self-Output correctness-ablation runs (04_sft method self_output with correctness), evaluated'),
    PaperOutput('table21', 'Table 21. Self-Output correctness ablation (Gemma 2 2B)',
                'Self-Output correctness-ablation runs on Gemma 2 2B (paper profile)'),
    PaperOutput('fig01', 'Figure 1. A response with high-PPL tokens highlighted',
                'a 01_score_tokens run'),
    PaperOutput('fig02', _figure(2),
                'evaluated runs on at least two label sources (ground truth, Self-Output, Rephrase) with label_ppl'),
    PaperOutput('fig03', 'Figure 3. Token PPL along one answer per data source',
                'a 01_score_tokens run'),
    PaperOutput('fig04', _figure(4),
                'ground truth, STM and Self-Output runs (accuracy panel: checkpoints evaluated by 05_evaluate)'),
    PaperOutput('fig05', _figure(5),
                'a tau sweep (STM at three or more tau values, or two plus ground truth) evaluated on every task'),
    PaperOutput('fig06', _figure(6),
                'a tau sweep on Gemma 2 2B (paper profile)'),
    PaperOutput('fig07', _figure(7),
                'convergence runs of Gemma 2 2B on MBPP (profile `paper`)'),
    PaperOutput('fig08', 'Figure 8. Token categories of all vs high-PPL tokens (Llama 3 8B in the paper)',
                'a 02_mask_tokens run'),
    PaperOutput('fig09', 'Figure 9. Token categories of all vs high-PPL tokens (Mistral 7B in the paper)',
                'a 02_mask_tokens run'),
    PaperOutput('fig10', 'Figure 10. Token categories of all vs high-PPL tokens (Gemma 2 2B in the paper)',
                'a 02_mask_tokens run'),
    PaperOutput('fig11', _figure(11),
                'the regularisation grid (06_regularization) evaluated by 05_evaluate (train_run includes it)'),
    PaperOutput('fig12', _figure(12),
                'the regularisation grid (06_regularization) evaluated on the non-target tasks'),
    PaperOutput('fig13', _figure(13),
                'LoRA runs per training-data source (ground truth, Self-Output, Rephrase) with weight analysis'),
    PaperOutput('fig14', _figure(14),
                'LoRA runs per training-data source with singular values of their updates'),
)
BY_ID = {o.id: o for o in CATALOGUE}
ORDER = [o.id for o in CATALOGUE]
TITLES = {o.id: o.title for o in CATALOGUE}
NEEDS = {o.id: o.needs for o in CATALOGUE if o.needs}
# Kit outputs beyond the paper that a sweep may name in `for:` (report sections of their own), and "all".
KIT_OUTPUTS = {"siblings": "Beyond the paper: STM and its siblings",
               "forgetting-curve": "Where forgetting appears: measures over training steps"}
FEEDS_ALL = "all"
