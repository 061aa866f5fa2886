"""A token-level continuous-batching vLLM engine, stepped in simulated time.

Each step serves up to `max_num_seqs` sequences: every running sequence past its prompt decodes one
token (under speculative decoding one or more, `Personality.gains`), and prompts are prefilled in chunks
within `max_num_batched_tokens`. A sequence is preempted (and recomputed later) when the KV cache overflows.
Step time comes from the hidden `StepCost` at the clock the GPU's power limit allows, times log-normal noise.
Sequences live in fixed numpy slot arrays.

Most steps only decode: every running sequence gains a token, and nothing else changes until one of them
finishes. Such a step touches no array: it counts itself (`_steps`), and the arrays catch up (`_sync`)
before anything reads or changes them (a prompt step, an admission, a finish, a preemption), so each step
costs a few scalar operations, not a dozen numpy calls on the slot arrays, for the same figures bit for bit.
Speculative decoding's steps, whose sequences gain unlike counts, run on exact arrays.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from simulator.hardware import SimGPU
from simulator.llms import StepCost
from simulator.personality import ROOFLINE, Personality
from simulator.requests import RequestLog
from simulator.vllm_metrics import EngineMetrics

NOISE_BLOCK = 256


class VLLMEngine:
    """One vLLM replica on one GPU."""

    def __init__(
        self,
        model_name: str,
        cost: StepCost,
        gpu: SimGPU,
        max_num_seqs: int,
        rng: np.random.Generator,
        max_num_batched_tokens: int = 8192,
        start_s: float = 0.0,
        keep_samples: bool = False,
        engine_id: str = "0",
        personality: Personality = ROOFLINE,
        requests: RequestLog | None = None,
    ) -> None:
        self.engine_id = engine_id
        """The `engine` label of its series: one per engine life, so a restart starts new counters."""
        self.model_name = model_name
        self.cost = cost
        self.gpu = gpu
        self.max_num_seqs = max_num_seqs
        self.personality = personality
        """How a step's work becomes time (hidden from the controller, as `cost` is)."""
        self.max_batched = personality.token_budget or max_num_batched_tokens
        self.rng = rng
        self.requests = requests
        """Where each finished request is logged (a scenario's request-level accounting); None: nowhere."""
        self.now_s = start_s
        self.metrics = EngineMetrics(model_name, keep_samples=keep_samples)
        self.metrics.speculative = bool(personality.draft_tokens)
        self.waiting: deque[tuple[float, int, int]] = deque()
        n = max_num_seqs
        self.active = np.zeros(n, dtype=bool)
        self.order = np.zeros(n, dtype=np.int64)
        self.arrival = np.zeros(n)
        self.sched = np.zeros(n)
        self.first_tok = np.zeros(n)
        self.prompt = np.zeros(n, dtype=np.int64)
        self.prompt_left = np.zeros(n, dtype=np.int64)
        self.ctx = np.zeros(n, dtype=np.int64)
        self.out_total = np.zeros(n, dtype=np.int64)
        self.out_left = np.zeros(n, dtype=np.int64)
        self.outputs = np.zeros(n, dtype=np.int64)
        """Steps that gave each sequence tokens after its first (kept under speculative decoding alone: else each
        gives one)."""
        self._seq = 0
        self._noise: list[float] = []  # step-time noise, drawn in blocks (a draw per step costs more than the step)
        self._hiccup: list[float] = []
        self._drawn = 0
        self._steps = 0
        """Steps taken; `out_left` and `ctx` are exact as of `_synced` (decode-only steps since then are owed)."""
        self._synced = 0
        self._finish_at: int | None = None
        """The step count at which the first running sequence finishes, while only decodes run (None: not known)."""
        # Running totals over active slots, kept in step with the arrays (cheaper than re-summing each step).
        self.n_active = 0
        self.n_prefill = 0
        self.ctx_sum = 0
        self.prompt_left_sum = 0

    @property
    def num_running(self) -> int:
        return self.n_active

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def outstanding(self) -> int:
        return self.num_running + self.num_waiting

    def submit(self, arrival_s: float, in_tokens: int, out_tokens: int) -> None:
        self.waiting.append((arrival_s, int(in_tokens), max(1, int(out_tokens))))

    def drain(self) -> list[tuple[float, int, int]]:
        """Remove every queued and running request (a restart loses them; the router resubmits)."""
        pending = list(self.waiting)
        for i in np.flatnonzero(self.active):
            pending.append((float(self.arrival[i]), int(self.prompt[i]), int(self.out_total[i])))
        self.waiting.clear()
        self.active[:] = False
        self.n_active = self.n_prefill = self.ctx_sum = self.prompt_left_sum = 0
        self._synced, self._finish_at = self._steps, None
        return pending

    def _sync(self) -> None:
        """Apply the decode-only steps taken since the arrays were last exact: in each, every active sequence
        decoded one token (no prompt was running, so every active sequence was decoding)."""
        owed = self._steps - self._synced
        if owed:
            act = self.active
            np.subtract(self.out_left, owed, out=self.out_left, where=act)
            np.add(self.ctx, owed, out=self.ctx, where=act)
            self._synced = self._steps

    def advance_to(self, t_s: float) -> None:
        """Run engine steps until the engine clock reaches `t_s` (the last step may end after it)."""
        waiting = self.waiting
        while self.now_s < t_s:
            if waiting and waiting[0][0] <= self.now_s:
                self._admit()
            if not self.n_active:
                nxt = self.waiting[0][0] if self.waiting else t_s
                idle_until = min(max(nxt, self.now_s), t_s)
                self.gpu.account(idle_until - self.now_s, self.gpu.spec.idle_w, idle_until)
                self.now_s = idle_until
                if idle_until >= t_s:
                    return
                continue
            self._step()

    def _admit(self) -> None:
        while self.waiting and self.waiting[0][0] <= self.now_s:
            free = np.flatnonzero(~self.active)
            if len(free) == 0:
                return
            kv_used = self.ctx_sum + self.prompt_left_sum
            arrival, n_in, n_out = self.waiting[0]
            if kv_used + n_in + n_out > self.cost.kv_capacity_tokens and self.n_active:
                return
            self._sync()
            self._finish_at = None
            self.waiting.popleft()
            i = int(free[0])
            self._seq += 1
            self.active[i] = True
            self.order[i] = self._seq
            self.arrival[i] = arrival
            self.sched[i] = self.now_s
            self.prompt[i] = n_in
            self.prompt_left[i] = n_in
            self.ctx[i] = 0
            self.out_total[i] = n_out
            self.out_left[i] = n_out
            self.outputs[i] = 0
            self.n_active += 1
            self.n_prefill += 1
            self.prompt_left_sum += n_in
            self.metrics.queue_time.observe_one(self.now_s - arrival)

    def _step(self) -> None:
        if self.n_prefill:
            self._prefill_step()
            return
        if self.personality.draft_tokens:
            self._speculative_step()
            return
        n_decode = self.n_active
        self._count_decodes(self._run(0, 0, 0.0, n_decode) / 1000.0, n_decode)
        self._steps += 1
        if self._finish_at is None:
            self._finish_at = self._synced + int(self.out_left[self.active].min())
        if self._steps >= self._finish_at:
            self._sync()
            self._finish(self.active & (self.out_left <= 0), self.now_s)
        if self.n_active > 1 and self.ctx_sum > self.cost.kv_capacity_tokens:  # _preempt_if_full's own test,
            self._preempt_if_full()  # asked inline: every decode step asks it, and it almost never holds

    def _speculative_step(self) -> None:
        """A decode-only step whose sequences gain one token or more each (on exact arrays: no two gain alike)."""
        self._sync()
        dt = self._run(0, 0, 0.0, self.n_active) / 1000.0
        self._steps += 1
        self._synced, self._finish_at = self._steps, None
        act = self.active.copy()
        self._decode(dt, act, self.n_active)
        if np.count_nonzero(done := act & (self.out_left <= 0)):
            self._finish(done, self.now_s)
        self._preempt_if_full()

    def _decode(self, dt: float, decoding: np.ndarray, n_decode: int) -> None:
        """The `n_decode` decodes of a step on exact arrays (`decoding`: their mask): a token each, or under
        speculative decoding what each sequence's drafts gave (one output, one ITL sample, however many tokens)."""
        if not self.personality.draft_tokens:
            self._count_decodes(dt, n_decode)
            self.out_left -= decoding  # a boolean mask: one in-place ufunc, no fancy indexing
            self.ctx += decoding
            return
        idx = np.flatnonzero(decoding)
        self.outputs[idx] += 1
        gained = np.minimum(self.personality.gains(self.rng, len(idx)), self.out_left[idx])
        self.out_left[idx] -= gained
        self.ctx[idx] += gained
        tokens = int(gained.sum())
        self.metrics.itl.observe_repeated(dt, n_decode)
        self.ctx_sum += tokens
        m = self.metrics
        m.generation_tokens_total += tokens
        m.drafts_total += n_decode
        m.draft_tokens_total += n_decode * self.personality.draft_tokens
        m.accepted_tokens_total += tokens - n_decode  # each kept token past the verified one was a draft's

    def _count_decodes(self, dt: float, n_decode: int) -> None:
        """A step's decodes: each sequence got its last token at the previous step's end, n_decode gaps of dt."""
        self.metrics.itl.observe_repeated(dt, n_decode)
        self.ctx_sum += n_decode
        self.metrics.generation_tokens_total += n_decode

    def _run(self, prefill_tokens: int, prefill_seqs: int, pairs: float, n_decode: int) -> float:
        """Time one step (ms, noise included), account its energy and advance the clock."""
        c = self.cost
        _, power_w, step_ms = self.gpu.run_step(
            *self.personality.step_parts(c, prefill_tokens, prefill_seqs, pairs, n_decode, self.ctx_sum))
        if self._drawn == len(self._noise):
            self._noise = np.exp(self.rng.normal(0.0, c.noise_sigma, NOISE_BLOCK) - 0.5 * c.noise_sigma**2).tolist()
            self._hiccup = np.where(self.rng.random(NOISE_BLOCK) < c.hiccup_prob, c.hiccup_ms, 0.0).tolist()
            self._drawn = 0
        step_ms = step_ms * self._noise[self._drawn] + self._hiccup[self._drawn]
        self._drawn += 1
        self.gpu.account(step_ms / 1000.0, power_w, self.now_s + step_ms / 1000.0)
        self.now_s += step_ms / 1000.0
        self.metrics.iteration_tokens.observe_one(prefill_tokens + n_decode)
        return step_ms

    def _prefill_step(self) -> None:
        """A step that carries prompt chunks (on exact arrays): decodes go first within the token budget."""
        self._sync()
        act = self.active
        waiting_prompt = act & (self.prompt_left > 0)
        decoding = act & ~waiting_prompt
        n_decode = self.n_active - self.n_prefill
        prefilling = np.flatnonzero(waiting_prompt)
        idx = prefilling[np.argsort(self.order[prefilling])]
        need = self.prompt_left[idx]
        before = np.cumsum(need) - need
        chunk = np.zeros_like(self.prompt_left)
        # a decoding sequence schedules its token and its drafts' (vLLM V1's scheduler) within the budget first
        room = self.max_batched - n_decode * (1 + self.personality.draft_tokens)
        chunk[idx] = np.minimum(np.maximum(max(0, room) - before, 0), need)
        prefill_tokens = int(chunk.sum())
        prefill_seqs = int(np.count_nonzero(chunk))
        pairs = 0.0
        if self.personality.attention_context is not None:
            pairs = float(chunk @ (self.ctx + 0.5 * chunk))
        dt = self._run(prefill_tokens, prefill_seqs, pairs, n_decode) / 1000.0
        now = self.now_s
        self._steps += 1
        self._synced, self._finish_at = self._steps, None

        self.prompt_left -= chunk
        self.ctx += chunk
        self.ctx_sum += prefill_tokens
        self.prompt_left_sum -= prefill_tokens
        finishing = decoding
        first = act & (self.prompt_left == 0) & (chunk > 0)
        n_first = int(first.sum())
        if n_first:
            self.n_prefill -= n_first
            self.metrics.ttft.observe_many(now - self.arrival[first])
            self.metrics.prefill_time.observe_many(now - self.sched[first])
            self.first_tok[first] = now
            self.out_left[first] -= 1
            self.metrics.prompt_tokens_total += int(self.prompt[first].sum())
            self.metrics.generation_tokens_total += n_first
            finishing = decoding | first
        if n_decode:
            self._decode(dt, decoding, n_decode)
        done = finishing & (self.out_left <= 0)
        if np.count_nonzero(done):
            self._finish(done, now)
        self._preempt_if_full()

    def _finish(self, done: np.ndarray, now: float) -> None:
        """Count the finished sequences and free their slots (a step finishes a few: scalars are cheapest)."""
        self._finish_at = None
        m = self.metrics
        idx = np.flatnonzero(done)
        for i in idx.tolist():
            gen = int(self.out_total[i])
            decode_s = now - float(self.first_tok[i])
            m.e2e.observe_one(now - float(self.arrival[i]))
            m.decode_time.observe_one(decode_s)
            m.request_prompt_tokens.observe_one(float(self.prompt[i]))
            m.request_generation_tokens.observe_one(float(gen))
            m.tpot.observe_one(decode_s / (gen - 1) if gen > 1 else 0.0)
            if self.requests is not None:
                self.requests.finish(float(self.arrival[i]), float(self.first_tok[i]), now, int(self.prompt[i]), gen,
                                     int(self.outputs[i]) if self.personality.draft_tokens else gen - 1)
            self.ctx_sum -= int(self.ctx[i])
        self.active[idx] = False
        self.n_active -= len(idx)
        m.success_total += len(idx)

    def _preempt_if_full(self) -> None:
        while self.n_active > 1 and self.ctx_sum > self.cost.kv_capacity_tokens:
            self._sync()
            self._finish_at = None
            live = np.flatnonzero(self.active)
            i = int(live[np.argmax(self.order[live])])
            self.active[i] = False
            self.n_active -= 1
            self.ctx_sum -= int(self.ctx[i])
            if self.prompt_left[i] > 0:
                self.n_prefill -= 1
                self.prompt_left_sum -= int(self.prompt_left[i])
            self.waiting.appendleft((float(self.arrival[i]), int(self.prompt[i]), int(self.out_total[i])))
            self.metrics.preemptions_total += 1

    def kv_usage(self) -> float:
        """Share of the KV cache in use (vLLM's `kv_cache_usage_perc`, 0-1)."""
        used = float(self.ctx_sum)
        return min(1.0, used / max(1, self.cost.kv_capacity_tokens))
