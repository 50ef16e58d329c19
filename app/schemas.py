"""Request bodies of the job API (documented in the OpenAPI page at /docs); responses: `app.responses`.

The API process does not import the engine (no torch in the API image); the method names below are
checked against the engine's registry by a test.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The engine's bundled calibration texts (slimkit.calibration.BUNDLED; a test checks they agree).
BUNDLED_TEXTS = ("wikitext2_valid", "wikitext2_test", "mixed")
EVALUATION_TEXT = "wikitext2_test"  # the engine's EvalSpec default, which the service evaluates on
ENGINE_METHODS = (
    "intraslice",
    "intraslice-nocomp",
    "wanda-sp",
    "flattengpt",
    "flattengpt-paper",
    "shortgpt",
    "transact",
)
DEPTH_METHODS = ("flattengpt", "flattengpt-paper", "shortgpt")  # remove whole layers (no head widths)
# One shape for every layer, chosen by the method (no head grid, no per-layer allocation, a ratio target only).
UNIFORM_SHAPE_METHODS = (*DEPTH_METHODS, "transact")
Method = Literal[
    "intraslice", "intraslice-nocomp", "wanda-sp", "flattengpt", "flattengpt-paper", "shortgpt", "transact"
]
# Always used with fullmatch: `$` would also match before a trailing newline ("ns/name\n").
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
# Git's ref-name rules (what the Hub accepts for a branch or tag): no control characters or whitespace,
# none of ~ ^ : ? * [ \, no "..", "@{" or "//"; the same rules as `slimkit.hubio.revision_problem`.
_BAD_REVISION = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def repo_id_problem(value: str) -> str | None:
    """Why `value` is not a Hub repo id `<namespace>/<name>` the Hub would accept, or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # the client's own (stricter) rules

    if not REPO_ID.fullmatch(value):
        return "must look like <namespace>/<name>: letters, digits, '-', '_', '.', at most 96 characters per part"
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        return f"is not a valid Hub repo id ({str(err).split(':')[0]})"
    return None


def revision_problem(value: str) -> str | None:
    """Why `value` cannot be a branch, tag or commit name (`feature/x`, `refs/pr/1`, a sha), or None."""
    if _BAD_REVISION.search(value) or value == "@":
        return "must not contain whitespace, control characters, '..', '//', '@{' or any of ~^:?*[\\"
    if value.startswith("/") or value.endswith(("/", ".")):
        return "must not start or end with '/' or end with '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in value.split("/")):
        return "no part may start with '.' or end with '.lock'"
    return None


def known_dataset(value: str | None) -> str | None:
    """A bundled text name or an hf://datasets/<owner>/<name>/<file> path (None passes)."""
    if (
        value is not None
        and value not in BUNDLED_TEXTS
        and not (value.startswith("hf://datasets/") and value.count("/") >= 5)
    ):
        raise ValueError(f"use {', '.join(BUNDLED_TEXTS)} or hf://datasets/<owner>/<name>/<file>")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Workload(Strict):
    batch: int = Field(1, ge=1, le=256, description="sequences per request")
    prompt_tokens: int = Field(512, ge=1, le=32768, description="prompt length (prefilled in one forward)")
    generated_tokens: int = Field(0, ge=0, le=4096, description="greedy decode steps after the prompt (0: prefill)")

    @model_validator(mode="after")
    def _timeable(self) -> Workload:
        if self.batch * (self.prompt_tokens + self.generated_tokens) > 1 << 17:
            raise ValueError("batch × (prompt_tokens + generated_tokens) must be <= 131072")
        return self


class Target(Strict):
    ratio: float | None = Field(None, gt=0, le=0.9, description="fraction of decoder attention+MLP params removed")
    speedup: float | None = Field(
        None,
        gt=1,
        le=20,
        description="instead of a ratio: the speed-up of `workload` to reach on the worker's device; measured "
        "after compression and reported next to the target",
    )
    workload: Workload | None = Field(None, description="what a speed-up is measured on (only with speedup)")
    allocation: Literal["uniform", "global", "global_pca"] | None = Field(
        None,
        description="spread the pruning uniformly over layers, or by the (PCA-aware) Fisher estimator; "
        "default: uniform for a ratio, global_pca for a speed-up",
    )
    head_step: int | None = Field(
        None,
        ge=2,
        le=256,
        multiple_of=2,
        description="width methods with a ratio: kept attention heads' widths are multiples of this; default 2 "
        "(free even widths, the best quality measured), 8 for the grid fused GPU attention kernels prefer. "
        "Speed-up targets plan on the 8-channel grid and refuse this field",
    )

    @model_validator(mode="after")
    def _one_target(self) -> Target:
        if (self.ratio is None) == (self.speedup is None):
            raise ValueError("give exactly one of target.ratio or target.speedup")
        if self.workload is not None and self.speedup is None:
            raise ValueError("target.workload only applies to a speedup target")
        if self.head_step is not None and self.speedup is not None:
            raise ValueError("target.head_step only applies to a ratio target (a speedup plans on the 8-channel grid)")
        # Stored requests say what will run: defaults resolved here, not in the worker.
        if self.allocation is None:
            self.allocation = "uniform" if self.ratio is not None else "global_pca"
        if self.speedup is not None and self.workload is None:
            self.workload = Workload()
        return self


class Calibration(Strict):
    dataset: str | None = Field(
        "mixed",
        description="a bundled text (mixed, the default: prose, Python docs and Python code in equal shares, so the "
        "model does not overfit one domain; wikitext2_valid: WikiText-2 prose only"
        "equal shares) or hf://datasets/<owner>/<name>/<file>",
    )
    text: str | None = Field(
        None,
        max_length=1_000_000,
        description="inline calibration text instead of dataset (stored once by its SHA-256; jobs show the hash)",
    )
    samples: int = Field(64, ge=1, le=4096)
    seq_len: int = Field(512, ge=8, le=32768)
    seed: int = Field(0, ge=0)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        return known_dataset(value)


class Evaluation(Strict):
    perplexity: bool = True
    max_tokens: int = Field(65536, ge=64, le=10_000_000)
    seq_len: int = Field(512, ge=8, le=32768)


class Recovery(Strict):
    """Distillation from the dense model after compression (slimkit.recovery); kept only if it helps."""

    tokens: int = Field(ge=1, le=2**31, description="training-token budget (rounded up to whole windows)")
    dataset: str | None = Field(
        None,
        description="what to train on: a bundled text or hf://datasets/<owner>/<name>/<file>; default: the "
        "calibration text. Never the evaluation text (wikitext2_test): evaluation stays held out",
    )
    seq_len: int = Field(512, ge=8, le=32768)
    batch_size: int = Field(4, ge=1, le=1024, description="windows per optimizer step")
    lr: float | None = Field(None, gt=0, le=1, description="peak learning rate (default 5e-5 full, 1e-3 lora)")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="after a linear warm-up")
    warmup: float = Field(0.05, ge=0, lt=1, description="fraction of the steps")
    temperature: float = Field(1.0, gt=0, le=100, description="distillation temperature")
    hidden_weight: float = Field(0.0, ge=0, le=1000, description="weight of hidden-state matching (0: logits only)")
    mode: Literal["auto", "full", "lora"] = Field(
        "auto",
        description="train every weight, or LoRA adapters merged back; auto: every weight where that fits the "
        "worker's GPU (weights, gradients, optimizer state and teacher within 75 % of its memory), LoRA otherwise",
    )
    lora_rank: int = Field(16, ge=1, le=1024)
    lora_alpha: float = Field(32.0, gt=0, le=10000)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        if value == EVALUATION_TEXT:
            raise ValueError(f"{EVALUATION_TEXT} is the evaluation text: recovery must not train on it")
        return known_dataset(value)


class TransAct(Strict):
    """TransAct's pruning stage (method `transact` only): shots, and distillation between them."""

    shots: int = Field(1, ge=1, le=64, description="pruning shots, each rescoring the current model (1: one-shot)")
    recovery_tokens: int = Field(
        0,
        ge=0,
        le=2**31,
        description="distillation tokens spread over the shots, more to later ones (0: prune only); trained with "
        "the `recovery` settings when given, else the recovery defaults",
    )


class Callback(Strict):
    """Where to POST the job's events, signed the Standard Webhooks way (see the README, "Callbacks")."""

    url: str = Field(
        max_length=2000,
        description="receives a POST on the terminal state (and, with stage_events, on every stage change); "
        "https outside development, never a loopback/private address in production",
    )
    secret: str | None = Field(
        None,
        description="your own signing secret (whsec_ + base64 of 24–64 bytes); default: generated and shown "
        "once, as `callback_secret` in this submit's response. Never stored in the request or shown again",
    )
    stage_events: bool = Field(False, description="also POST `job.stage` on every stage change")

    @field_validator("url")
    @classmethod
    def _safe_url(cls, value: str) -> str:
        from app.callbacks import url_problem

        if problem := url_problem(value):
            raise ValueError(f"url {problem}")
        return value

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, value: str | None) -> str | None:
        from app.callbacks import secret_problem

        if value is not None and (problem := secret_problem(value)):
            raise ValueError(f"secret {problem}")
        return value


class Output(Strict):
    repo_id: str | None = Field(
        None,
        description="where to push; default <owner>/<name>-<method>-<target> (or <hub_namespace>/<owner>-<name>-…). "
        "Must match the token's allowed output patterns; never the source repo, never a repo this service did not "
        "create for you",
    )
    private: bool = True
    push: bool = True
    overwrite: bool = Field(False, description="allow updating a repo that holds an earlier output of yours")

    @field_validator("repo_id")
    @classmethod
    def _valid_repo(cls, value: str | None) -> str | None:
        if value is not None and (problem := repo_id_problem(value)):
            raise ValueError(f"repo_id {problem}")
        return value


class JobTemplate(Strict):
    """What to run, without which model: a job body minus `model` and `revision` (watch rules reuse it)."""

    method: Method = "intraslice"
    target: Target
    calibration: Calibration = Field(default_factory=Calibration)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    recovery: Recovery | None = Field(None, description="distil from the dense model after compressing (default off)")
    transact: TransAct | None = Field(None, description="method transact: shots and between-shot training")
    callback: Callback | None = Field(None, description="POST signed events about this job to a URL")
    output: Output = Field(default_factory=Output)

    @model_validator(mode="after")
    def _recovery_needs_evaluation(self) -> JobTemplate:
        if self.recovery is not None and not self.evaluation.perplexity:
            raise ValueError("recovery needs evaluation.perplexity: it is kept only if held-out perplexity improves")
        return self

    @model_validator(mode="after")
    def _head_step_for_width_methods(self) -> JobTemplate:
        if self.target.head_step is not None and self.method in DEPTH_METHODS:
            raise ValueError(f"target.head_step does not apply to {self.method}, which removes whole layers")
        if self.target.head_step is not None and self.method in UNIFORM_SHAPE_METHODS:
            raise ValueError(f"target.head_step does not apply to {self.method}, which keeps heads at full width")
        if self.target.ratio is not None and self.method not in UNIFORM_SHAPE_METHODS and self.target.head_step is None:
            self.target.head_step = 2  # the stored request says what will run (the engine's ratio default)
        return self

    @model_validator(mode="after")
    def _uniform_shape_methods(self) -> JobTemplate:
        uniform = self.target.speedup is None and self.target.allocation == "uniform"
        if self.method in UNIFORM_SHAPE_METHODS and not uniform:
            raise ValueError(f"{self.method} gives every layer one shape: use target.ratio with uniform allocation")
        if self.transact is not None and self.method != "transact":
            raise ValueError("transact settings only apply to method transact")
        if self.method == "transact" and self.transact is None:
            self.transact = TransAct()  # the stored request says what will run
        return self


class JobCreate(JobTemplate):
    model: str = Field(description="Hub model id, e.g. HuggingFaceTB/SmolLM2-135M")
    revision: str = Field("main", min_length=1, max_length=200, description="branch, tag or commit")

    @field_validator("model")
    @classmethod
    def _valid_model(cls, value: str) -> str:
        if problem := repo_id_problem(value):
            raise ValueError(f"model must be a Hub model id <namespace>/<name>: it {problem}")
        return value

    @field_validator("revision")
    @classmethod
    def _valid_revision(cls, value: str) -> str:
        if problem := revision_problem(value):
            raise ValueError(f"revision {problem}")
        return value

    def fingerprint(self) -> str:
        """Canonical hash of the request: equal bodies (after defaults) hash equal."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
