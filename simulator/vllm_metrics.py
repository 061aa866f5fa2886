"""vLLM V1 metrics of emulated engines, exposed with prometheus-client under vLLM's own names.

Histograms accumulate with numpy (one searchsorted per engine step), so the emulator stays fast;
a custom collector renders them, with vLLM's default bucket edges and labels `model_name`, `engine`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class Histogram:
    """Cumulative-bucket histogram; optionally keeps raw samples for ground-truth benchmarks."""

    def __init__(self, edges: Sequence[float], keep_samples: bool = False) -> None:
        self.edges = np.asarray(edges, dtype=float)
        self._edge_list = [float(e) for e in edges]
        self._labels = [repr(e) for e in self._edge_list]
        """Each bucket's `le` as rendered (built once: every scrape renders every bucket)."""
        self.counts = [0] * (len(edges) + 1)
        """Per bucket (the last past every edge), not cumulative; a list: one step's add is a scalar's."""
        self.sum = 0.0
        self.samples: list[NDArray[np.float64]] | None = [] if keep_samples else None

    def observe_many(self, values: NDArray[np.float64]) -> None:
        if values.size <= 1:
            if values.size:
                self.observe_one(float(values[0]))
            return
        idx = np.searchsorted(self.edges, values, side="left")
        added = np.bincount(idx, minlength=len(self.counts)).tolist()
        self.counts = [c + a for c, a in zip(self.counts, added, strict=True)]
        self.sum += float(values.sum())
        if self.samples is not None:
            self.samples.append(np.array(values, dtype=float))

    def observe_one(self, value: float) -> None:
        self.observe_repeated(value, 1)

    def observe_repeated(self, value: float, times: int) -> None:
        """`times` observations of the same value (one decode step's inter-token gaps)."""
        self.counts[bisect_left(self._edge_list, value)] += times
        self.sum += value * times
        if self.samples is not None:
            self.samples.append(np.full(times, value))

    def keep(self) -> None:
        """Keep raw samples from now on (a ground-truth benchmark asks it of engines already running)."""
        if self.samples is None:
            self.samples = []

    @property
    def count(self) -> int:
        return sum(self.counts)

    def all_samples(self) -> NDArray[np.float64]:
        if not self.samples:
            return np.zeros(0)
        return np.concatenate(self.samples)

    def buckets(self) -> list[tuple[str, float]]:
        cum = list(accumulate(self.counts))
        out = [(label, float(c)) for label, c in zip(self._labels, cum[:-1], strict=True)]
        out.append(("+Inf", float(cum[-1])))
        return out


class EngineMetrics:
    """Everything one engine counts."""

    def __init__(self, model_name: str, keep_samples: bool = False) -> None:
        self.model_name = model_name
        self.ttft = Histogram(TTFT_BUCKETS, keep_samples)
        self.itl = Histogram(ITL_BUCKETS, keep_samples)
        self.tpot = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(REQUEST_BUCKETS, keep_samples)
        self.queue_time = Histogram(REQUEST_BUCKETS, keep_samples)
        self.prefill_time = Histogram(REQUEST_BUCKETS)
        self.decode_time = Histogram(REQUEST_BUCKETS)
        self.request_prompt_tokens = Histogram(TOKEN_BUCKETS)
        self.request_generation_tokens = Histogram(TOKEN_BUCKETS)
        self.iteration_tokens = Histogram(TOKEN_BUCKETS)
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.success_total = 0
        self.preemptions_total = 0
        self.speculative = False
        """Whether the engine drafts (vLLM exports the spec_decode counters only then)."""
        self.drafts_total = 0
        """Decoding requests' steps that drafted (vllm:spec_decode_num_drafts)."""
        self.draft_tokens_total = 0
        self.accepted_tokens_total = 0

    def histograms(self) -> dict[str, Histogram]:
        return {
            "vllm:time_to_first_token_seconds": self.ttft,
            "vllm:inter_token_latency_seconds": self.itl,
            "vllm:request_time_per_output_token_seconds": self.tpot,
            "vllm:e2e_request_latency_seconds": self.e2e,
            "vllm:request_queue_time_seconds": self.queue_time,
            "vllm:request_prefill_time_seconds": self.prefill_time,
            "vllm:request_decode_time_seconds": self.decode_time,
            "vllm:request_prompt_tokens": self.request_prompt_tokens,
            "vllm:request_generation_tokens": self.request_generation_tokens,
            "vllm:iteration_tokens_total": self.iteration_tokens,
        }


class EngineView(Protocol):
    """What the collector reads from a live engine."""

    metrics: EngineMetrics
    engine_id: str
    max_num_seqs: int

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    def kv_usage(self) -> float: ...


class VllmCollector(Collector):
    """Renders one or more engines (one `engine` label each, their `engine_id`) as a vLLM /metrics page, or
    only the families named in `families` (a reader that reads a few need not have the rest built)."""

    def __init__(self, engines: Callable[[], Iterable[EngineView]], families: Collection[str] | None = None) -> None:
        self._engines = engines
        self._families = families

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name", "engine"]
        engines = list(self._engines())
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests in model execution batches.", labels=labels)
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting to be processed.", labels=labels)
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=labels)
        prompt = CounterMetricFamily("vllm:prompt_tokens", "Prefill tokens processed.", labels=labels)
        gen = CounterMetricFamily("vllm:generation_tokens", "Generation tokens processed.", labels=labels)
        preempt = CounterMetricFamily("vllm:num_preemptions", "Cumulative preemptions.", labels=labels)
        success = CounterMetricFamily(
            "vllm:request_success", "Successfully processed requests.", labels=[*labels, "finished_reason"]
        )
        drafts = CounterMetricFamily("vllm:spec_decode_num_drafts", "Spec decode drafts.", labels=labels)
        drafted = CounterMetricFamily("vllm:spec_decode_num_draft_tokens", "Spec decode draft tokens.", labels=labels)
        accepted = CounterMetricFamily("vllm:spec_decode_num_accepted_tokens", "Spec decode accepted tokens.",
                                       labels=labels)
        hists: dict[str, HistogramMetricFamily] = {}
        for engine in engines:
            m = engine.metrics
            lv = [m.model_name, engine.engine_id]
            running.add_metric(lv, engine.num_running)
            waiting.add_metric(lv, engine.num_waiting)
            kv.add_metric(lv, engine.kv_usage())
            prompt.add_metric(lv, m.prompt_tokens_total)
            gen.add_metric(lv, m.generation_tokens_total)
            preempt.add_metric(lv, m.preemptions_total)
            success.add_metric([*lv, "stop"], m.success_total)
            if m.speculative:
                drafts.add_metric(lv, m.drafts_total)
                drafted.add_metric(lv, m.draft_tokens_total)
                accepted.add_metric(lv, m.accepted_tokens_total)
            for name, h in m.histograms().items():
                if self._families is None or name in self._families:
                    fam = hists.setdefault(name, HistogramMetricFamily(name, name, labels=labels))
                    fam.add_metric(lv, h.buckets(), h.sum)
        families: list[Metric] = [running, waiting, kv, prompt, gen, preempt, success, *hists.values()]
        families += [f for f in (drafts, drafted, accepted) if f.samples]  # absent without speculative decoding
        yield from (f for f in families if self._families is None or f.name in self._families)
