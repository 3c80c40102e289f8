"""How large a llama.cpp context a call needs, and how many prompts may run in it at once.

Three limits shape a context (`llama.ContextSize`):

- memory: the KV cache may take at most `kv_memory` bytes (by default a quarter of the free memory,
  at most 2 GiB), i.e. `kv_memory // model.kv_bytes_per_cell()` cells;
- llama.cpp's sequence ids: at most `MAX_SEQUENCES` sequences per context;
- the batch: prompts are admitted while the rows they hold (or are expected to hold) stay under
  `max_batch_rows`, because on a CPU the gain of a wider batch flattens out well before 32 rows
  while every admitted prompt still reserves M sequences of memory (BENCHMARKS.md, "Engine speed").

No sequence runs out of cells in normal operation. The two KV layouts (see `llama.Context`) are
sized differently:

- streams (run, eval, calibration, serve): every sequence gets a stream of its own, as long as the
  longest prompt plus a full generation. Parallel sampling runs `max_batch_rows // M` prompts of M
  streams each. For EAGer the streams are one pool of `max_batch_rows × POOL_HEADROOM + 1` (at
  least M + 1, at most what the call's prompts can use; fewer when memory is short) that every
  prompt draws from, a fork waiting when none is free (`streams.SequencePool`), plus the pool's
  spare stream, kept empty: an EAGer prompt holds few rows most of the time, and reserving
  its worst case, M streams, for every prompt running at once would need several times parallel
  sampling's memory to keep the batch as full. When not even M + 1 full streams fit, the streams
  are shortened and a sequence that reaches the end of its stream finishes with `kv_full`.
- unified (a caller that keeps sequences: chat): one pool of cells; a prompt reserves its prompt
  plus M full-length sequences, and the kept sequences' cells stay on top. An EAGer prompt starts
  as one row and branches later, so admission counts it by the rows it is expected to reach at
  its widest (`RowForecast`), not by its first row.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..config import MAX_SEQUENCES, GenerationConfig
from ..llama import ContextSize

DEFAULT_KV_MEMORY = 2 << 30  # bytes of KV cache the engine allocates at most by default
DEFAULT_BATCH_ROWS = 32  # rows the active prompts may hold (or be expected to hold) at once
# EAGer's pool of streams, as a multiple of the batch limit: admission expects max_batch_rows rows,
# prompts outgrow the forecast, and a fork that finds no stream pauses its whole prompt (its rows
# wait undecoded, and are moved out of the batch's block of ids). The headroom makes pauses rare
# for a quarter more KV memory (BENCHMARKS.md, "EAGer's memory").
POOL_HEADROOM = 1.25
_CELL_BLOCK = 256  # llama.cpp rounds a stream's cells up to a multiple of 256


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _sysconf(name: str) -> int:
    try:
        return os.sysconf(name)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name (macOS)
        return 0


def default_kv_memory() -> int:
    """At most 2 GiB of KV cache, and at most a quarter of the memory available now."""
    pages = _sysconf("SC_AVPHYS_PAGES") or _sysconf("SC_PHYS_PAGES")
    page_size = _sysconf("SC_PAGE_SIZE")
    if not pages or not page_size:
        return DEFAULT_KV_MEMORY
    return max(64 << 20, min(DEFAULT_KV_MEMORY, pages * page_size // 4))


def plan_context(
    longest_prompt: int,
    config: GenerationConfig,
    n_prompts: int,
    *,
    cell_limit: int,
    max_batch_rows: int,
    kept_ids: set[int] = frozenset(),
    kept_cells: int = 0,
    unified: bool = False,
) -> tuple[ContextSize, int]:
    """The context for a call and how many of its prompts may run at once.

    `config.max_sequences` is the largest cap M of the call's prompts; `cell_limit` the KV cells
    memory allows; `kept_ids` / `kept_cells` the sequences a caller keeps alive between calls (their
    ids stay valid, their cells stay occupied). One sequence id is left spare: llama.cpp applies
    pending stream copies by decoding into an empty sequence (`Context._apply_copies`), and a pool
    of streams swaps two of them through it (`streams.SequencePool.compact`).
    """
    cap = config.max_sequences
    kept = len(kept_ids)
    if unified:
        per_prompt = longest_prompt + cap * config.max_new_tokens
        prompts_that_fit = cell_limit // per_prompt
    else:
        stream = round_up(longest_prompt + config.max_new_tokens, _CELL_BLOCK)
        prompts_that_fit = (cell_limit // stream - kept - 1) // cap
    if not unified and config.method != "parallel":  # EAGer on pooled streams (above)
        pool = min(max(int(max_batch_rows * POOL_HEADROOM), cap), n_prompts * cap) + 1  # no more than they can use
        n_seq = min(MAX_SEQUENCES, pool + 1, max(cap + 1, cell_limit // stream))  # + the pool's spare
        concurrent = min(n_prompts, max(1, n_seq - 2))
    else:
        concurrent = min(
            n_prompts,
            max(1, (MAX_SEQUENCES - kept - 1) // cap),
            max(1, prompts_that_fit),
        )
        if config.method == "parallel":  # admission never lets more in (M rows each): reserve no more
            concurrent = min(concurrent, max(1, max_batch_rows // cap))
        n_seq = min(MAX_SEQUENCES, concurrent * cap + kept + 1)
    n_seq = max(n_seq, max(kept_ids, default=0) + 1)  # kept sequences keep their ids
    if unified:
        cells = round_up(max(min(cell_limit, concurrent * per_prompt + kept_cells), longest_prompt + 1), _CELL_BLOCK)
    elif n_seq * stream <= cell_limit:
        cells = stream
    else:  # not even one prompt fits at full length: shorter streams
        cells = max(round_up(longest_prompt + 1, _CELL_BLOCK), cell_limit // n_seq // _CELL_BLOCK * _CELL_BLOCK,
                    _CELL_BLOCK)
    return ContextSize(cells=cells, n_seq_max=n_seq, n_batch=max(512, n_seq), unified=unified), concurrent


def fits(size: ContextSize, current: ContextSize, cells_per_seq: int) -> bool:
    """Whether a context of size `current` (with `cells_per_seq` cells per sequence) can serve `size`."""
    return (current.unified == size.unified and cells_per_seq >= size.cells
            and current.n_seq_max >= size.n_seq_max)


def regrown(size: ContextSize, current: ContextSize, cells_per_seq: int, cell_limit: int) -> ContextSize:
    """The size to rebuild a too-small context with, so the next calls do not rebuild it again.

    Keeps what the current context could do and grows its cells by at least half again, so a
    conversation that lengthens turn by turn does not rebuild its context every turn, within the
    memory limit. A change of layout starts from `size` as planned.
    """
    if current.unified != size.unified:
        return size
    grown = round_up(cells_per_seq * 3 // 2, _CELL_BLOCK)
    roomy = replace(size, n_seq_max=max(size.n_seq_max, current.n_seq_max),
                    n_batch=max(size.n_batch, current.n_batch))
    if size.unified:
        return replace(roomy, cells=max(size.cells, min(cell_limit, grown)))
    cells = max(size.cells, grown) if size.cells > cells_per_seq else cells_per_seq
    roomy = replace(roomy, cells=cells)
    return roomy if roomy.n_ctx <= cell_limit else size


class RowForecast:
    """How many rows an EAGer prompt will hold at its widest, learnt while a call runs.

    The forecast is the mean peak width of the prompts finished so far in the call, plus one
    pseudo-observation halfway between one row and the cap M: before any prompt has finished that
    is all the engine knows, and later observations follow what the model actually does. Counting
    the first row only would admit every prompt at once and the batch would then branch far past
    its row limit; counting M would admit too few at first (BENCHMARKS.md, "EAGer admission").
    """

    def __init__(self, cap: int):
        self.total = (1 + cap) / 2
        self.count = 1

    def observe(self, peak_rows: int) -> None:
        self.total += peak_rows
        self.count += 1

    def rows(self, cap: int) -> float:
        return min(float(cap), self.total / self.count)
