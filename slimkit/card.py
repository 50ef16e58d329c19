"""The model card (README.md) pushed with a compressed model.

A reader of the Hub page should learn, without opening any JSON, what was removed, how much, at what
measured cost in perplexity, from which calibration data, and how to load the result; tools should find
`base_model` and the tags in the YAML front matter. Everything comes from the record the engine wrote
(`compression.json`) plus the job's own identity — never from settings, so no token can end up here.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

LOAD_STOCK = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
```"""

LOAD_SLIM = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

# Layers have different widths, which no stock config can express: the repo ships its modeling code
# (modeling_slim.py), so loading needs trust_remote_code=True. Read that file before you run it.
model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
# The tokenizer needs no code; say so, or transformers asks about modeling_slim.py (it reads config.json first).
tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=False)
```"""


def front_matter(base_model: str, method: str) -> str:
    meta = {
        "base_model": base_model,
        "tags": ["pruned", method],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def _params_table(before: dict[str, int], after: dict[str, int]) -> str:
    rows = [
        ("Decoder attention + MLP", "attention_mlp"),
        ("Without embeddings", "without_embeddings"),
        ("Whole model", "total"),
    ]
    lines = ["| Parameters | Before | After | Removed |", "|---|---:|---:|---:|"]
    for label, key in rows:
        b, a = before[key], after[key]
        lines.append(f"| {label} | {_count(b)} | {_count(a)} | {1 - a / b:.1%} |")
    return "\n".join(lines)


def _quality(metrics: dict[str, Any]) -> str:
    if "perplexity_after" not in metrics:
        return "Perplexity was not measured for this model (evaluation was turned off in the job)."
    ev = metrics.get("evaluation", {})
    before = metrics.get("perplexity_before")
    lines = ["| Perplexity | Before | After |", "|---|---:|---:|"]
    lines.append(
        f"| {ev.get('text', '?')} | {before:.3f} | {metrics['perplexity_after']:.3f} |"
        if before is not None
        else f"| {ev.get('text', '?')} | – | {metrics['perplexity_after']:.3f} |"
    )
    protocol = (
        f"Protocol: non-overlapping windows of {ev.get('seq_len', '?')} tokens over `{ev.get('text', '?')}`, "
        f"{ev.get('tokens', 0):,} tokens in all"
        + (f" (capped at {ev['max_tokens']:,})" if ev.get("max_tokens") else "")
        + "; lower is better. Perplexity on one text is a coarse signal: check the tasks you care about."
    )
    return "\n".join(lines) + "\n\n" + protocol


def _recovery(recovery: dict[str, Any], recipe: dict[str, Any]) -> str:
    spec = recipe.get("recovery") or {}
    verdict = (
        "kept: held-out perplexity improved"
        if recovery["kept"]
        else "**discarded**: held-out perplexity got worse, so the pre-recovery weights were kept"
    )
    return (
        "| Recovery | Value |\n|---|---:|\n"
        f"| Training tokens | {recovery['tokens']:,} |\n"
        f"| Wall time | {recovery['wall_s']:.0f} s |\n"
        f"| Perplexity before recovery | {recovery['perplexity_before']:.3f} |\n"
        f"| Perplexity after recovery | {recovery['perplexity_after']:.3f} |\n\n"
        f"After compression the model was distilled from the base model ({spec.get('mode', '?')} training"
        + (f" — chosen automatically, {recovery['mode_reason']}" if recovery.get("mode_reason") else "")
        + ", "
        f"KL at temperature {spec.get('temperature', '?')}"
        + (f" plus hidden-state matching × {spec['hidden_weight']}" if spec.get("hidden_weight") else "")
        + f", learning rate {spec.get('lr', '?')}, {spec.get('schedule', '?')} schedule) on windows of "
        f"`{spec.get('text', '?')}`, never on the evaluation text. Result: {verdict}."
    )


def _transact(transact: dict[str, Any]) -> str:
    plan, shots = transact["plan"], transact["shots"]
    heads = plan["kv_heads"] * plan["heads_per_group"]
    how = {
        "none": "no attention head was removed",
        "heads": "whole attention heads were removed (query, key and value together)",
        "query_heads": "query heads were removed evenly from every KV group",
        "kv_groups": "whole KV groups (a KV head with all its query heads) were removed",
        "kv_groups_and_query_heads": "whole KV groups and query heads within the kept groups were removed",
    }[plan["attention_mode"]]
    training = (
        f", with {transact['recovery_tokens']:,} tokens of distillation from the base model between them"
        if transact["recovery_tokens"]
        else " with no training between them (prune-only)"
    )
    return (
        "TransAct: channels of the activations inside attention (the input of o_proj) and the MLP (the input of "
        f"down_proj) were scored by their L2 norm on the calibration text, and {how}: every layer now has "
        f"{heads} attention heads sharing {plan['kv_heads']} KV heads, at full head width, and an MLP of "
        f"{plan['intermediate_size']} channels (attention −{plan['attention_ratio']:.1%}, MLP "
        f"−{plan['mlp_ratio']:.1%}, the split chosen by the scores). Pruned in {len(shots)} shot(s){training}. "
        "Every layer has the same shape, so the model is the stock architecture with a smaller configuration."
    )


def _structure(depth: dict[str, Any] | None, transact: dict[str, Any] | None = None) -> str:
    if transact is not None:
        return _transact(transact)
    if depth is None:
        return (
            "Whole heads, head dimensions and MLP channels were removed, so the result is a smaller dense model "
            "that runs faster without sparse kernels."
        )
    merged = [g for g in depth["groups"] if len(g) > 1]
    kept = {i for g in depth["groups"] for i in g}
    dropped = sorted(set(range(depth["layers_before"])) - kept)
    how = []
    if merged:
        how.append(
            "adjacent layers " + ", ".join("+".join(map(str, g)) for g in merged) + " were flattened into one "
            "layer each and pruned back to the original width"
        )
    if dropped:
        how.append("layers " + ", ".join(map(str, dropped)) + " were dropped")
    return (
        f"Depth compression: {depth['layers_before']} → {depth['layers_after']} decoder layers; "
        + "; ".join(how)
        + ". Every layer keeps the original shape, so the model is the stock architecture with fewer layers."
    )


def _target(recipe: dict[str, Any], speed: dict[str, Any] | None) -> str:
    if speed is None:
        target = f"Target: remove {recipe['ratio']:.0%} of the decoder's attention and MLP parameters."
        bias = recipe.get("bias")
        if bias is None or recipe.get("allocation") != "uniform":
            return target
        split = (
            "the same fraction of its attention and of its MLP"
            if bias == 1
            else f"its MLP λ_b = {bias:g} times that fraction, its attention the rest"
        )
        return f"{target} Every layer gives up that fraction of its own parameters: {split}."
    return (
        f"Target: a {speed['target']:.2f}× speed-up (see Speed below); to reach it, "
        f"{speed['ratio']:.1%} of the decoder's attention and MLP parameters were to be removed."
    )


def _speed(speed: dict[str, Any]) -> str:
    w = speed.get("workload", {})
    workload = f"batch {w.get('batch')} × {w.get('prompt_tokens')} prompt tokens" + (
        f", {w['generated_tokens']} generated tokens" if w.get("generated_tokens") else " (prefill only)"
    )
    verdict = "met" if speed.get("met") else "**not met**"
    return (
        "| Speed-up | Value |\n|---|---:|\n"
        f"| Target | {speed['target']:.2f}× |\n"
        f"| Predicted when planning | {speed['predicted_speedup']:.2f}× |\n"
        f"| Measured | **{speed['measured']:.2f}×** ({verdict}) |\n"
        f"| Best achievable (every layer at the cap) | {speed['best_achievable']:.2f}× |\n\n"
        f"Measured on {speed.get('device', '?')} in {speed.get('dtype', '?')}, workload {workload}: the base "
        f"model and this one, each loaded with `from_pretrained`, timed alternately ({speed.get('repeats', '?')} "
        f"runs each, medians {speed['dense_s']:.4g} s → {speed['compressed_s']:.4g} s). Speed depends on "
        "the device, dtype, batch and sequence lengths: measure on yours."
    )


def _calibration(calibration: dict[str, Any], label: str | None) -> str:
    source = label or f"`{calibration.get('text', '?')}`"
    return (
        f"{calibration.get('samples', '?')} samples of {calibration.get('seq_len', '?')} tokens "
        f"({calibration.get('calibration_tokens', 0):,} tokens) drawn with seed {calibration.get('seed', '?')} "
        f"from {source} ({calibration.get('stream_tokens', 0):,} tokens after tokenisation)."
    )


def render(
    record: dict[str, Any],
    base_model: str,
    base_revision: str | None,
    repo_id: str,
    calibration_label: str | None = None,
    hub_url: str = "https://huggingface.co",
) -> str:
    """README.md text for `repo_id` from the engine's record (`compression.json`).

    calibration_label: how to name the calibration source when the record's own name means nothing to a
    reader (inline text supplied with the job lives in a temporary file). hub_url: where the base model's
    page is (the Hub the card is pushed to).
    """
    recipe = record["recipe"]
    method = recipe["method"]
    ratio = record["ratio_achieved"]
    fmt = record.get("format", "slim")
    revision = f" at commit `{base_revision}`" if base_revision else ""
    kv = record.get("kv_cache_bytes_per_token_fp16")
    parts = [
        front_matter(base_model, method),
        f"# {repo_id.split('/')[-1]}",
        f"A structurally pruned version of [{base_model}]({hub_url.rstrip('/')}/{base_model}){revision}, "
        f"made with slimkit {record.get('slimkit_version', '?')} using the **{method}** method.",
        "## What was done",
        f"{_target(recipe, record.get('speedup'))} Achieved: "
        f"{ratio['attention_mlp']:.1%} of attention + MLP, {ratio['without_embeddings']:.1%} of the model "
        f"without embeddings, {ratio['total']:.1%} of the whole model (embeddings and the LM head are kept). "
        + _structure(record.get("depth"), record.get("transact")),
        _params_table(record["params_before"], record["params_after"]),
    ]
    if kv:
        parts.append(
            f"KV cache: {kv['before']:,} → {kv['after']:,} bytes per token (fp16)."
            if kv["before"] != kv["after"]
            else f"KV cache: unchanged at {kv['before']:,} bytes per token (fp16)."
        )
    if record.get("speedup"):
        parts += ["## Speed", _speed(record["speedup"])]
    parts += ["## Quality", _quality(record.get("metrics", {}))]
    if record.get("recovery"):
        parts += ["## Recovery", _recovery(record["recovery"], recipe)]
    parts += [
        "## Calibration data",
        _calibration(record.get("calibration", {}), calibration_label),
        "## How to load it",
        (LOAD_SLIM if fmt == "slim" else LOAD_STOCK).format(repo=repo_id),
        f"Format: `{fmt}`"
        + (" (a stock transformers architecture)." if fmt == "stock" else " (per-layer shapes, custom code)."),
        "## Recipe",
        f"The recipe below reproduces this model from the same base commit; its SHA-256 (of the JSON with "
        f"sorted keys) is `{record['recipe_sha256']}`. The full record is in `compression.json`.",
        "```json\n" + json.dumps(recipe, indent=2, sort_keys=True) + "\n```",
    ]
    return "\n\n".join(parts) + "\n"
