"""Catalogs: what a run uses (sources, models, stage settings), as pydantic models.

Every model forbids unknown keys. `load_catalog` turns validation failures into a `CatalogError`
naming the file, the dotted key path, the bad value and what was expected. Relative paths in a
catalog are resolved against the current working directory (run `vora` from the repository root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from vora_core.errors import CatalogError
from vora_core.workdir import RunDir, atomic_write_text, fingerprint


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------------- sources


class SyntheticShapesSource(Strict):
    """Generated images of coloured shapes with ground-truth alt text and labels (the demo's data)."""

    kind: Literal["synthetic_shapes"]
    n: int = Field(400, gt=0, description="images in the training split")
    heldout: int = Field(100, ge=0, description="extra images kept for evaluation, never downloaded")
    min_side: int = Field(48, ge=8)
    max_side: int = Field(320, ge=8)
    shape_scale: float = Field(
        1.0, gt=0, le=1.6, description="shape radius × this (small: 0.15, large: 0.3 of the shorter side at 1.0)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _sides(self) -> SyntheticShapesSource:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        return self


class UrlListSource(Strict):
    """A parquet/csv/jsonl file (or glob) of image URLs with optional captions."""

    kind: Literal["url_list"]
    path: str
    format: Literal["parquet", "csv", "jsonl"] | None = Field(None, description="default: from the suffix")
    url_col: str = "url"
    caption_col: str | None = "caption"
    id_col: str | None = Field(None, description="a unique id per row; default: the row number")


class DataCompSource(Strict):
    """DataComp metadata parquets (uid, url, text, original_width, original_height, sha256, ...)."""

    kind: Literal["datacomp"]
    path: str = Field(description="a parquet file, directory or glob of DataComp metadata")
    min_longer_edge: int = Field(448, ge=0, description="keep rows whose longer side is > this (pixels)")
    verify_sha256: bool = False
    limit: int | None = Field(None, gt=0)


class GLDv2Source(Strict):
    """Google Landmarks v2: train.csv (id, url, landmark_id) and optional helpers."""

    kind: Literal["gldv2"]
    train_csv: str
    clean_csv: str | None = Field(None, description="train_clean.csv: keep only its images")
    label_to_category_csv: str | None = Field(None, description="train_label_to_category.csv for alt text")
    limit: int | None = Field(None, gt=0)


class ParquetImagesSource(Strict):
    """Parquet files that already hold image bytes (+ captions/conversations): no network."""

    kind: Literal["parquet_images"]
    path: str
    id_col: str = "id"
    image_col: str = Field("image", description="binary column, or struct with a `bytes` field, or a list")
    caption_col: str | None = Field(None, description="alt text column")
    conversations_col: str | None = "conversations"
    recaptioned: bool = Field(
        False, description="the rows carry their recaption (the released VoRA recap parquet): the last assistant turn "
        "of `conversations_col` is the image's caption, which the recaption stage keeps instead of captioning the "
        "image again (an image without one is captioned)")

    @model_validator(mode="after")
    def _recaption_column(self) -> ParquetImagesSource:
        if self.recaptioned and not self.conversations_col:
            raise ValueError("recaptioned: the captions are read from `conversations_col`; set it")
        return self


Source = Annotated[
    SyntheticShapesSource | UrlListSource | DataCompSource | GLDv2Source | ParquetImagesSource,
    Field(discriminator="kind"),
]

# -------------------------------------------------------------------------------------- orchestration


class Resources(Strict):
    """What one unit of a stage asks of a Ray node (orchestration.runner: ray; the local runner ignores it).
    Null: the stage's default (vora_core/resources.py); settings here never change a unit's fingerprint."""

    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0, description="null: the stage's default on a GPU cluster, 0 on a CPU one")
    memory: int | None = Field(None, gt=0, description="bytes of memory reserved per unit (Ray's `memory`)")
    custom: dict[str, float] = Field(default_factory=dict, description="Ray custom resources, e.g. {node_type_a100: 1}")


class RaySettings(Strict):
    address: str | None = Field(
        None, description="auto (the cluster this machine joined) | ray://head:10001 | head:6379; null: a Ray "
                          "instance on this machine, for the run")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="passed to ray.init (env_vars, pip, ...)")
    connect_timeout_s: float = Field(10, gt=0, description="a cluster that does not answer in this time fails the run")
    max_retries: int = Field(3, ge=0, description="times Ray reruns a unit whose node or worker died (a unit's own "
                                                  "error is retried by the stage's unit_retries, not here)")
    check_resources: bool = Field(True, description="fail at plan time when no live node fits a stage's resources "
                                                    "(false for an autoscaling cluster that adds nodes on demand)")


class OrchestrationSettings(Strict):
    runner: Literal["local", "ray"] = Field(
        "local", description="local: units run in this process (threads); ray: as Ray tasks on a cluster")
    ray: RaySettings = Field(default_factory=RaySettings)


# ------------------------------------------------------------------------------------------- download


class DownloadSettings(Strict):
    """img2dataset settings (its own names where they exist)."""

    image_size: int = Field(448, gt=0)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    min_image_size: int = Field(0, ge=0, description="img2dataset's check: the *shorter* side")
    max_aspect_ratio: float | None = Field(None, gt=0)
    max_image_area: int = Field(89_478_485, gt=0, description="decompression-bomb guard (pixels)")
    retries: int = Field(2, ge=0)
    timeout: int = Field(10, gt=0, description="seconds per request")
    processes_count: int = Field(2, gt=0)
    thread_count: int = Field(16, gt=0)
    number_sample_per_shard: int = Field(1000, gt=0)
    rows_per_unit: int = Field(10_000, gt=0, description="url rows per unit (one img2dataset call)")
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    unit_timeout_s: float = Field(3600, gt=0, description="hard limit for one unit's img2dataset child")
    parallel_units: int = Field(1, gt=0, description="units downloading at once (each has its own pool)")
    unit_retries: int = Field(2, ge=0, description="Prefect retries (with backoff) of a failed unit")
    resources: Resources = Field(default_factory=Resources)
    max_failure_rate: float = Field(
        0.5, ge=0, le=1,
        description="the stage fails when more than this share of attempted rows failed (link rot alone "
                    "loses 10-40% of an old url list; more than half points at the network, the url column "
                    "or a blocking host)",
    )
    user_agent_token: str | None = None
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )

    @model_validator(mode="after")
    def _shards_per_unit(self) -> DownloadSettings:
        if self.rows_per_unit % self.number_sample_per_shard:
            raise ValueError(
                f"rows_per_unit ({self.rows_per_unit}) must be a multiple of number_sample_per_shard "
                f"({self.number_sample_per_shard}) so shard numbers are stable across units"
            )
        return self


# ------------------------------------------------------------------------------------------ recaption

# Varied requests for a detailed caption (the paper prompts its captioner with several for diversity).
DEFAULT_CAPTION_PROMPTS = [
    "Describe this image in detail.",
    "Write a detailed description of everything visible in this picture.",
    "What is shown in this image? Give a thorough description.",
    "Provide a comprehensive caption for this image, covering the objects, their colours, the layout and the "
    "background.",
    "Describe the scene in this photo: the main subjects, their attributes, and the setting.",
    "Describe this image to someone who cannot see it, from the most prominent object to the small details.",
    "Give an elaborate account of the contents of this image, including any visible text.",
    "Summarise what this picture shows, then describe its parts and how they are arranged.",
]


class TinyCaptionerSettings(Strict):
    """Sizes of the seeded random Qwen2-VL captioner that `model: tiny` builds (demo and tests)."""

    hidden_size: int = Field(64, gt=0)
    layers: int = Field(2, gt=0)
    vision_depth: int = Field(1, gt=0)
    vision_width: int = Field(32, gt=0)
    vocab_size: int = Field(512, gt=0)


class VllmCaptionSettings(Strict):
    """In-process `vllm.LLM` (engine: vllm)."""

    tensor_parallel_size: int = Field(1, gt=0)
    max_model_len: int = Field(8192, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_seqs: int | None = Field(None, gt=0, description="default: vLLM's")
    dtype: str = "auto"
    enforce_eager: bool = False
    images_per_call: int = Field(1024, gt=0, description="images handed to one `generate` call")


class OpenAICaptionSettings(Strict):
    """OpenAI-compatible chat-completions servers (engine: openai), e.g. `vllm serve` per GPU group."""

    base_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000/v1"], min_length=1)
    served_model_name: str | None = Field(None, description="the server's model name; default: recaption.model")
    api_key_env: str | None = Field("VORA_OPENAI_API_KEY", description="env var holding the key (optional)")
    concurrency: int = Field(64, gt=0, description="requests in flight, over all servers")
    timeout_s: float = Field(300, gt=0, description="per request")
    max_retries: int = Field(6, ge=0, description="per request, on 429/5xx/timeouts/connection errors")
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles each retry, with jitter")
    backoff_max_s: float = Field(30, ge=0)


class CaptionQualitySettings(Strict):
    """Thresholds of the quality flags (captions are flagged, never dropped)."""

    repetition_ngram: int = Field(3, gt=0, description="word n-gram size of the repetition check")
    repetition_ratio: float = Field(0.5, gt=0, le=1, description="flag when this share of n-grams are repeats")
    repetition_min_words: int = Field(8, ge=1, description="shorter captions are never `repetitive`")


class RecaptionSettings(Strict):
    """A Qwen2-VL caption for every downloaded image (see vora_core/caption)."""

    engine: Literal["hf", "openai", "vllm"] = "hf"
    model: str = Field(
        "tiny",
        description="HF name or local directory; `tiny` = build the tiny captioner into <workdir>/models/captioner",
    )
    tiny: TinyCaptionerSettings = Field(default_factory=TinyCaptionerSettings)
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_CAPTION_PROMPTS), min_length=1)
    system_prompt: str = "You are a helpful assistant."
    seed: int = 0
    batch_size: int = Field(8, gt=0, description="images per engine call (hf: one padded batch)")
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    min_pixels: int = Field(3136, gt=0, description="images are resized to at least this many pixels")
    max_pixels: int = Field(
        200_704, gt=0, description="...and at most this many (448x448 = 256 image tokens); keep it capped"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: fp32 on CPU, bf16 on GPU")
    device: str = Field("auto", description="hf engine: auto | cpu | cuda | cuda:N")
    cpu_threads: int | None = Field(
        None, gt=0, description="hf engine: torch threads while captioning (null: torch's default; 1 suits tiny models)"
    )
    batch_retries: int = Field(2, ge=0, description="a failing batch is retried this often before its shard fails")
    unit_retries: int = Field(1, ge=0, description="Prefect retries (with backoff) of a failed shard; openai engine "
                              "only (local engines fail deterministically)")
    parallel_units: int = Field(1, gt=0, description="shards captioned at once")
    resources: Resources = Field(default_factory=Resources)
    concurrency_limit: str | None = Field(
        "vora-gpu", description="Prefect global concurrency limit guarding GPU slots (none: unguarded)"
    )
    vllm: VllmCaptionSettings = Field(default_factory=VllmCaptionSettings)
    openai: OpenAICaptionSettings = Field(default_factory=OpenAICaptionSettings)
    quality: CaptionQualitySettings = Field(default_factory=CaptionQualitySettings)
    max_flag_share: float = Field(
        0.2, ge=0, le=1,
        description="warn (log + recaption table) when more than this share of a source's images carry a flag",
    )
    max_failure_rate: float = Field(
        0.05, ge=0, le=1,
        description="the stage fails when more than this share of the images got no caption (undecodable "
                    "image, request the engine rejected): the download decoded every image once already, so "
                    "more than a few point at the engine's configuration or at damaged shards",
    )

    @model_validator(mode="after")
    def _pixels(self) -> RecaptionSettings:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})")
        if any(not p.strip() for p in self.prompts):
            raise ValueError("prompts must not hold empty strings")
        if self.engine == "vllm":
            # Qwen2-VL: one image token per 28x28 pixels; prompt + image + answer must fit max_model_len.
            need = self.max_pixels // 784 + self.max_new_tokens + 128
            if need > self.vllm.max_model_len:
                raise ValueError(
                    f"max_pixels ({self.max_pixels}) allows {self.max_pixels // 784} image tokens; with "
                    f"max_new_tokens ({self.max_new_tokens}) that exceeds vllm.max_model_len "
                    f"({self.vllm.max_model_len}): lower max_pixels or raise vllm.max_model_len"
                )
        return self


# ---------------------------------------------------------------------------------------------- merge


class MergeSettings(Strict):
    """Merge the pretrained LoRA into the LLM (fp32 math) and check the result with a probe batch."""

    source: str | None = Field(None, description="pretrained VoRA directory; default: <workdir>/pretrain/final")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="storage dtype of the merged weights")
    tolerance: float = Field(
        1e-5, gt=0, description="float32 storage: allowed max |logit difference|, merged vs unmerged, per unit "
        "of the probe's largest |logit| (at least 1)")
    low_precision_factor: float = Field(
        4.0, gt=0,
        description="bf16/fp16 storage: allowed difference = factor x the difference that rounding the unmerged "
                    "weights to that dtype already causes on the probe, + tolerance",
    )
    probe_images: int = Field(2, ge=0, description="images in the probe batch (one row each, plus a text-only row)")
    probe_text: str = "Describe the image in one sentence."
    probe_seed: int = 0
    device: str = Field("auto", description="where the probe runs: auto | cpu | cuda | cuda:N")
    resources: Resources = Field(default_factory=Resources)


# ------------------------------------------------------------------------------------------- evaluate


class BenchmarkSettings(Strict):
    """A benchmark in one of the public layouts documented in docs/benchmarks.md (local files only)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    format: Literal["pope", "mme", "mmbench", "scienceqa", "seedbench", "ai2d", "textvqa", "vqav2", "jsonl"] = Field(
        description="the files' layout (docs/benchmarks.md)"
    )
    path: str = Field(description="the benchmark's file or directory")
    image_dir: str | None = Field(None, description="where its images are; default: the layout's usual place")
    split: str | None = Field(None, description="pope: category; mme: subtask; scienceqa: split (test); ai2d: test")
    limit: int | None = Field(None, gt=0, description="first N questions only (smoke runs)")
    circular: bool | None = Field(
        None, description="mmbench: CircularEval over the circular copies the tsv holds (default on)")


class EvaluateSettings(Strict):
    """Benchmarks under the LLaVA-1.5 protocol: greedy decoding, batched (see vora_core/eval)."""

    model: str = Field("finetune", description="finetune | merged | pretrain (that stage's output) or a directory")
    benchmarks: list[BenchmarkSettings] = Field(default_factory=list)
    heldout: bool = Field(True, description="add the held-out benchmarks of every synthetic_shapes source")
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(128, gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: fp32 on CPU, bf16 on GPU")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    resources: Resources = Field(default_factory=Resources)
    max_failure_rate: float = Field(
        0.05, ge=0, le=1,
        description="the stage fails when more than this share of questions was rejected (a benchmark file "
                    "is curated: rejects point at a wrong layout or missing images)",
    )


# ---------------------------------------------------------------------------------- model (pretrain)


class TinyModelSettings(Strict):
    """Sizes of the seeded tiny LLM (+ tokenizer trained on the run's own text) and tiny AIMv2 teacher that
    `model.llm: tiny` / `model.teacher: tiny` build into <workdir>/models/ (demo and tests)."""

    vocab_size: int = Field(1024, gt=0)
    hidden_size: int = Field(64, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(128, gt=0)
    teacher_hidden_size: int = Field(32, gt=0)
    teacher_layers: int = Field(2, gt=0)
    teacher_heads: int = Field(2, gt=0)
    teacher_intermediate_size: int = Field(64, gt=0)
    teacher_pretrain_images: int = Field(
        0, ge=0, description="generated shape pictures the tiny teacher learns to classify (shape, colour, "
        "position, background) before distillation, standing in for a real ViT's pretraining; 0: a random "
        "teacher. Needs a synthetic_shapes source (its generator settings are used, under another seed)")
    teacher_pretrain_epochs: int = Field(12, gt=0)
    teacher_pretrain_lr: float = Field(2e-3, gt=0)
    llm_reading_steps: int = Field(
        0, ge=0, description="batches of generated reading texts (a described shape, then yes/no, lettered-"
        "option and what-is-it questions about it) the tiny LLM is trained on before VoRA's stages, standing "
        "in for a real LLM's language pretraining (vora_core.train.reading); 0: a random LLM")
    llm_reading_lr: float = Field(3e-4, gt=0)
    seed: int = 0

    @model_serializer(mode="wrap")
    def _without_unused_reading(self, handler):
        # No reading practice: the settings dump as before the fields existed, so the fingerprints of
        # earlier runs (tiny models, pretraining, ablations) still match and nothing is rebuilt.
        dumped = handler(self)
        if isinstance(dumped, dict) and not self.llm_reading_steps:
            dumped.pop("llm_reading_steps", None)
            dumped.pop("llm_reading_lr", None)
        return dumped


class ModelSettings(Strict):
    """The VoRA model the pretrain stage builds (VoRAConfig fields); finetune reads the merged model."""

    llm: str = Field("tiny", description="HF name or directory of the instruct LLM; `tiny` = build one")
    teacher: str | None = Field("tiny", description="HF name or directory of the AIMv2 teacher; `tiny` = build one")
    tiny: TinyModelSettings = Field(default_factory=TinyModelSettings)
    lora_rank: int = Field(1024, ge=0, description="0: no LoRA, pretraining trains every LLM weight (the paper's "
                           "full-parameter ablation, which it found unstable)")
    lora_layers: int | None = Field(None, gt=0, description="LoRA'd and distilled blocks; default: teacher depth")
    vision_attention: Literal["bidirectional", "causal"] = "bidirectional"
    distill: Literal["blockwise", "last", "none"] = "blockwise"
    distill_weight: float = Field(1.0, ge=0)
    image_size: int = Field(448, gt=0)
    patch_size: int = Field(14, gt=0)
    transform: Literal["square", "native"] = Field(
        "square", description="square: pad with the mean colour + resize (paper); native: AnyRes ≤ max_image_tokens"
    )
    max_image_tokens: int | None = Field(None, gt=0, description="native: token cap per image (default: grid²)")
    attn_implementation: Literal["sdpa", "eager", "flex_attention"] = Field(
        "sdpa", description="flex_attention: CUDA only (block-sparse image/packing mask)"
    )

    @model_validator(mode="after")
    def _geometry(self) -> ModelSettings:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.distill != "none" and self.teacher is None:
            raise ValueError(f"distill: {self.distill} needs a teacher; set model.teacher or distill: none")
        return self


# ---------------------------------------------------------------------------------- pretrain / finetune


class TrainSettings(Strict):
    """One training run (vora_core/train): packing, batch, optimiser, schedule, checkpoints, torchrun.

    Global batch = micro_batch × grad_accum × nproc_per_node × nnodes rows; with packing a row holds
    several samples (up to seq_len tokens, vision tokens included)."""

    seq_len: int = Field(4096, gt=0, description="tokens per row (vision tokens included)")
    packing: bool = Field(True, description="pack samples into rows (doc ids, restarting positions); false pads")
    micro_batch: int = Field(1, gt=0, description="rows per forward pass and rank")
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(2e-4, gt=0)
    schedule: Literal["constant_with_warmup", "cosine", "constant"] = "constant_with_warmup"
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: floor as a fraction of lr")
    steps: int | None = Field(None, gt=0, description="optimizer steps (or give epochs)")
    epochs: float | None = Field(None, gt=0, description="passes over the mixture (steps of the first epoch × this)")
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global grad norm (null: no clipping)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    grad_checkpointing: bool = False
    frozen_bf16: bool = Field(
        True, description="under bf16 autocast, keep the frozen linear weights that bf16 holds exactly (a bf16 "
        "checkpoint's) in bf16: the same step without autocast's per-step casts, half their memory; saved as "
        "fp32 (not with fsdp2 over several ranks)")
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile each LLM decoder block (regional; inductor on CPU and CUDA). auto: on "
        "CUDA only — measured 1.25-1.33x on an H200 at 7B dimensions, 0.89-0.99x on CPU at the demo's size "
        "(README Performance)")
    lm_loss_chunk: int = Field(4096, ge=0, description="label positions per chunk of the LM loss (the batch's "
                               "[tokens, vocab] logits are never held at once); 0: all at once")
    checkpoint_every: int = Field(500, gt=0, description="optimizer steps between checkpoints (and one at the end)")
    keep_last: int = Field(2, gt=0, description="checkpoints kept")
    nan_tolerance: int = Field(5, gt=0, description="this many non-finite steps in a row stop the run")
    max_skipped_share: float = Field(
        0.01, ge=0, le=1, description="a sample whose image fails to load is skipped (counted in metrics.jsonl); "
        "more than this share of the mixture's samples skipped (per epoch begun) stops the run")
    num_workers: int = Field(2, ge=0, description="DataLoader workers per rank (and sample-index processes)")
    system_prompt: str | None = Field(None, description="added when a conversation has none; null: the template's")
    nproc_per_node: int = Field(1, gt=0)
    nnodes: int = Field(1, gt=0)
    node_rank: int = Field(0, ge=0, description="this machine's rank (multi-node: set per node)")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous (multi-node); null: standalone")
    strategy: Literal["ddp", "fsdp2"] = "ddp"
    device: str = Field("auto", description="auto | cpu | cuda")
    cpu_threads: int | None = Field(None, gt=0, description="torch threads per rank on CPU (null: torch's default)")
    resources: Resources = Field(default_factory=Resources)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _steps_or_epochs(cls, data: Any) -> Any:
        # Giving only one of `steps` / `epochs` replaces the other's default.
        if isinstance(data, dict):
            for given, other in (("steps", "epochs"), ("epochs", "steps")):
                if data.get(given) is not None and other not in data:
                    data = {**data, other: None}
        return data

    @model_validator(mode="after")
    def _length(self) -> TrainSettings:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be < nnodes ({self.nnodes})")
        return self


class PretrainSettings(TrainSettings):
    """Stage 1 (paper): LoRA + vision embedding + distillation heads, lr 2e-4 constant, warmup 100."""

    steps: int | None = Field(1000, gt=0, description="optimizer steps (or give epochs)")
    mixture: str | None = Field(None, description="mixture directory; default: <workdir>/mixture/pretrain")


class FinetuneSettings(TrainSettings):
    """Stage 2 (paper): all LLM parameters + vision embedding on the merged model, lr 2e-5 cosine, warmup 20."""

    lr: float = Field(2e-5, gt=0)
    schedule: Literal["constant_with_warmup", "cosine", "constant"] = "cosine"
    warmup_steps: int = Field(20, ge=0)
    steps: int | None = Field(None, gt=0, description="optimizer steps (or give epochs)")
    epochs: float | None = Field(1.0, gt=0, description="passes over the mixture")
    model: str | None = Field(None, description="model directory to finetune; default: <workdir>/merged")
    mixture: str | None = Field(None, description="mixture directory; default: <workdir>/mixture/finetune")


# ------------------------------------------------------------------------------- text sources & mix

TEXT_FORMATS = ("sharegpt", "messages", "prompt_response", "llava", "shapes_vqa")
FILE_FORMATS = ("sharegpt", "messages", "prompt_response", "llava")


class TextSource(Strict):
    """A text-instruction or VQA source, read into canonical conversations (`text/<source>/`).

    sharegpt: `conversations: [{from, value}]`; messages: `[{role, content}]`; prompt_response: one
    turn from columns; llava: the LLaVA-665K json array, images from `image_dir`; shapes_vqa: VQA in
    the held-out benchmark's formats over a synthetic_shapes source's training images."""

    format: Literal["sharegpt", "messages", "prompt_response", "llava", "shapes_vqa"]
    path: str | None = Field(None, description="jsonl / json / parquet file, directory or glob (local or fsspec URL)")
    file_format: Literal["jsonl", "json", "parquet"] | None = Field(None, description="default: from the suffix")
    id_col: str | None = Field(None, description="a unique id per row; default: `id` when present, else the row "
                               "number (llava: the row number, as its `id` repeats)")
    conversations_col: str = "conversations"
    messages_col: str = "messages"
    prompt_col: str = Field("question", description="prompt_response: the user turn")
    response_col: str = Field("response", description="prompt_response: the assistant turn")
    system_col: str | None = Field(None, description="prompt_response: an optional system prompt column")
    context_col: str | None = Field(None, description="prompt_response: appended to the prompt (Dolly)")
    image_dir: str | None = Field(None, description="llava: the folder the `image` paths are relative to")
    source: str | None = Field(None, description="shapes_vqa: the synthetic_shapes source")
    draws: int = Field(1, gt=0, description="shapes_vqa: conversations per image (options drawn anew)")
    layout: Literal["shuffled", "opening", "single"] = Field(
        "shuffled", description="shapes_vqa: `shuffled`: every question in a seeded order; `opening`: the k-th "
        "conversation of an image opens with its k-th question (multiple choice and yes/no first), the "
        "short-answer questions follow, so no earlier turn gives the opening answer away; `single`: the "
        "k-th conversation is the image's k-th question alone, as evaluation asks it")
    limit: int | None = Field(None, gt=0, description="first N rows only")

    @model_validator(mode="after")
    def _needs(self) -> TextSource:
        if self.format in FILE_FORMATS and not self.path:
            raise ValueError(f"format {self.format} needs `path`")
        if self.format == "llava" and not self.image_dir:
            raise ValueError("format llava needs `image_dir` (the folder its `image` paths are relative to)")
        if self.format == "shapes_vqa" and not self.source:
            raise ValueError("format shapes_vqa needs `source` (a synthetic_shapes source)")
        return self


DEFAULT_MIX_CAPTION_PROMPTS = [
    "Describe the image.",
    "What is in this picture?",
    "Write a detailed description of the image.",
    "Give a short caption for this image.",
    "Describe what you see.",
]


class CaptionMix(Strict):
    """Image-caption samples: `user: "<image>\n{prompt}"`, `assistant: caption`."""

    policy: Literal["recap", "alt", "recap_or_alt"] = Field(
        "recap", description="recap: the recaption stage's caption; alt: the source's alt text; recap_or_alt: "
        "the caption when it is usable, else the alt text"
    )
    sources: list[str] | None = Field(None, description="image sources used (default: all)")
    min_side: int = Field(0, ge=0, description="drop images whose shorter side is below this (pixels)")
    exclude_flags: list[Literal["empty", "truncated", "repetitive", "undecodable"]] = Field(
        default_factory=lambda: ["empty", "truncated", "repetitive", "undecodable"],
        description="a recaption with any of these flags is not used",
    )
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_MIX_CAPTION_PROMPTS), min_length=1)
    repeat: int = Field(1, gt=0, description="each caption sample this many times")


class TextShare(Strict):
    """How much of a text source goes into a mixture: `weight` (share of the whole mixture) or
    `repeat` (a factor on the source's rows; 0.5 = a deterministic half)."""

    weight: float | None = Field(None, gt=0, lt=1)
    repeat: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> TextShare:
        if (self.weight is None) == (self.repeat is None):
            raise ValueError("give exactly one of weight and repeat")
        return self


class MixtureSettings(Strict):
    captions: CaptionMix | None = Field(default_factory=CaptionMix, description="null: no caption samples")
    text: dict[str, TextShare] = Field(default_factory=dict, description="text source name → weight or repeat")
    seed: int = 0


class MixSettings(Strict):
    """The mix stage: one mixture per training stage, built with DuckDB over the manifest."""

    pretrain: MixtureSettings = Field(default_factory=MixtureSettings)
    finetune: MixtureSettings = Field(default_factory=lambda: MixtureSettings(captions=None))
    memory_limit: str = Field("2GB", description="DuckDB memory_limit")
    threads: int = Field(2, gt=0, description="DuckDB threads")
    resources: Resources = Field(default_factory=Resources)
    rows_per_part: int = Field(1_000_000, gt=0, description="text parquet part size (rows)")
    max_failure_rate: float = Field(
        0.5, ge=0, le=1,
        description="the stage fails (before any mixture is built) when more than this share of the text "
                    "sources' rows were rejected (a source missing some of its images rejects a few; more than "
                    "half points at a wrong `format`, `image_dir` or file)",
    )


# -------------------------------------------------------------------------------------------- catalog


class Catalog(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: str = Field(description="the run directory; relative paths are against the working directory")
    stages_dir: str | None = Field(
        None, description="where pretrain/, merged/, finetune/, eval/ and the lock go; default: workdir "
        "(`vora ablate` gives each variant its own, under <workdir>/ablations/)")
    seed: int = 0
    sources: dict[str, Source] = Field(min_length=1)
    download: DownloadSettings = Field(default_factory=DownloadSettings)
    # -- later stages add their sections below this line (one field each, with defaults) --
    recaption: RecaptionSettings = Field(default_factory=RecaptionSettings)
    text_sources: dict[str, TextSource] = Field(default_factory=dict)
    mix: MixSettings = Field(default_factory=MixSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)

    @model_validator(mode="after")
    def _source_names(self) -> Catalog:
        # Each message starts with the key it is about (these checks see the whole catalog) and says the fix.
        for name in self.sources:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"sources.{name}: a source name may hold only letters, digits, '_' and '-'; "
                                 "rename it")
        shapes = [n for n, s in self.sources.items() if s.kind == "synthetic_shapes"]
        for name, text in self.text_sources.items():
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"text_sources.{name}: a text source name may hold only letters, digits, '_' "
                                 "and '-'; rename it")
            if name in self.sources:
                raise ValueError(f"text_sources.{name}: sources.{name} has this name too (both would write "
                                 f"shards/{name}/); rename one of them")
            if text.source is not None and text.source not in shapes:
                raise ValueError(f"text_sources.{name}.source: {text.source!r} is not a synthetic_shapes source; "
                                 f"name one of: {_listed(shapes)}")
        for stage in ("pretrain", "finetune"):
            mixture: MixtureSettings = getattr(self.mix, stage)
            for name in mixture.text:
                if name not in self.text_sources:
                    raise ValueError(f"mix.{stage}.text: {name!r} is not in text_sources; name one of: "
                                     f"{_listed(self.text_sources)}, or add it to text_sources")
            for name in (mixture.captions.sources or []) if mixture.captions else []:
                if name not in self.sources:
                    raise ValueError(f"mix.{stage}.captions.sources: {name!r} is not an image source; name one "
                                     f"of: {_listed(self.sources)}")
            total = sum(t.weight or 0 for t in mixture.text.values())
            if total >= 1:
                raise ValueError(f"mix.{stage}.text: the weights add up to {total:g}; each is a share of the whole "
                                 "mixture, so together they must stay below 1 (lower them, or give a source "
                                 "`repeat` instead)")
        if self.model.tiny.teacher_pretrain_images and not any(
                s.kind == "synthetic_shapes" for s in self.sources.values()):
            raise ValueError("model.tiny.teacher_pretrain_images: pretraining the tiny teacher draws pictures like "
                             "a synthetic_shapes source's; add one or set it to 0")
        return self

    @property
    def run(self) -> RunDir:
        return RunDir(self.workdir, self.stages_dir)

    def settings_fingerprint(self, *parts: Any) -> str:
        """Fingerprint of the given settings (pydantic models are dumped to JSON first)."""
        return fingerprint(*[p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts])

    def write_lock(self) -> Path:
        """Write the resolved catalog (all defaults filled in) to `<workdir>/catalog.lock.yaml`."""
        self.run.ensure()
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        lock = self.run.lock_file
        if lock.exists() and lock.read_text() == text:
            return lock  # unchanged: a rerun rewrites nothing
        return atomic_write_text(lock, text)


# ----------------------------------------------------------------------------------- loading & errors


def _listed(names: Any) -> str:
    return ", ".join(names) or "none yet"


def _shown(value: Any) -> str:
    """A bad value as an error shows it: a scalar as written (cut short), a section by its kind only —
    a message never dumps a section (or the whole catalog)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    return {dict: "a mapping", list: "a list"}.get(type(value), f"a {type(value).__name__}")


def _describe(err: dict[str, Any]) -> str:
    """One line per validation error: the dotted key, what is wrong and the fix, at most a short value."""
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (remove it or check its spelling)"
    if kind == "missing":
        return f"{loc}: required key is missing (add it)"
    if kind == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags", "")
        return f"{loc}: unknown kind {_shown(err['input'].get('kind'))}; expected one of {expected}"
    if kind == "union_tag_not_found":
        return f"{loc}: needs a `kind` key"
    if kind in ("model_type", "model_attributes_type", "dict_type"):  # pydantic names a class here
        return f"{loc}: expected a mapping of keys, got {_shown(err['input'])}"
    if kind == "list_type":
        return f"{loc}: expected a list, got {_shown(err['input'])}"
    if kind == "value_error":  # a model's own check: its message names the keys and values it is about
        msg = err["msg"].removeprefix("Value error, ")
        return f"{loc}: {msg}" if err["loc"] else msg
    return f"{loc}: {err['msg']} (got {_shown(err['input'])})"


def _clean_loc(err: dict[str, Any], data: Any) -> dict[str, Any]:
    # pydantic puts the union tag into the location (sources.x.url_list.path): drop it.
    loc, node, clean = list(err["loc"]), data, []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            clean.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            clean.append(part)
        elif isinstance(node, dict) and node.get("kind") == part:
            continue
        else:
            clean.append(part)
    return {**err, "loc": tuple(clean)}


def parse_catalog(data: Any, source: str = "<catalog>") -> Catalog:
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Catalog.model_validate(data)
    except ValidationError as e:
        lines = [_describe(_clean_loc(err, data)) for err in e.errors()]
        raise CatalogError(f"{source}: invalid catalog:\n  " + "\n  ".join(lines)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool):  # complex keys: left to PyYAML
                continue
            if key in seen:
                raise CatalogError(f"{self.name}: key {key!r} is given twice (lines {seen[key]} and {line}); "
                                   "keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found (see catalogs/ for examples)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CatalogError(f"{path}: not UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start}); "
                           "save the catalog as UTF-8") from None
    try:
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)  # marks and errors name the file, not "<unicode string>"
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise CatalogError(f"{path}: not valid YAML: {e}") from None
    return parse_catalog(data, str(path))
