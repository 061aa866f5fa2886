"""The KV cache's bound on the batch: a replica runs no more sequences than its cache holds.

vLLM allocates KV blocks as a sequence grows and admits a waiting request only while blocks are free
(preempting the newest when they run out), so however large `--max-num-seqs` is, the batch that runs is at most
the cache's tokens over what one running sequence holds: its prompt and what it has generated so far. The
sequences running at any moment are the long-lived ones more often (an inspection paradox), so they have
generated m (1 + cv^2) / 2 tokens on average, m the mean output and cv its spread: half of it for fixed
lengths, all of it for exponential ones. Every vLLM publishes the cache's size (`vllm:cache_config_info`:
num_gpu_blocks x block_size); with it (`ServiceParams.kv_tokens`) the chain runs at the smaller of the two
batches. Long prompts at large batches are where it binds: 2,048-token prompts with 256-token outputs of cv 1
on a cache of 437k tokens fit about 190 sequences, not 256.
"""

from __future__ import annotations

import math
from dataclasses import replace

from queuemodels.params import ServiceParams
from queuemodels.types import Load, ServerShape


def batch_limit(params: ServiceParams, load: Load) -> int | None:
    """The most sequences of this load the cache holds (None: no cache size known)."""
    if params.kv_tokens <= 0.0:
        return None
    per_sequence = load.in_tokens + load.out_tokens * (1.0 + load.out_cv**2) / 2.0
    return max(1, math.floor(params.kv_tokens / per_sequence))


def fitting_shape(params: ServiceParams, load: Load, shape: ServerShape) -> ServerShape:
    """`shape` with its max batch cut to what the cache holds (itself where the cache holds the whole batch)."""
    limit = batch_limit(params, load)
    if limit is None or limit >= shape.max_batch:
        return shape
    return replace(shape, max_batch=limit)
