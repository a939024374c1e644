"""Expand a job into variants: ``plan`` (axes, counts, checkpoints), ``variants`` (the lazy stream,
ids, shards) and ``inputs`` (img2img file references). Pure: no asyncio, no network."""

from pipeline.expand.plan import (Axis, Plan, build_plan, checkpoints, combination_count, count,
                                  prompt_count, seed_count)
from pipeline.expand.variants import in_shard, variant_id, variants
from pipeline.job.fields import MATRIX_ALIASES

__all__ = ["Axis", "Plan", "build_plan", "checkpoints", "combination_count", "count",
           "prompt_count", "seed_count", "in_shard", "variant_id", "variants", "MATRIX_ALIASES"]
