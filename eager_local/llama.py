"""The only module that talks to llama.cpp.

Everything above it sees numpy arrays and token ids. It wraps llama-cpp-python's low-level ctypes API
(pinned in pyproject.toml: that API changes between releases) into two objects:

- `Model`: a loaded GGUF, its vocabulary, tokenizer and chat template;
- `Context`: one llama.cpp context with many sequences (a KV stream each, or one unified cache), a
  reusable batch, the logits of the last decode as a zero-copy (rows, vocab) view, sequence
  fork/drop and per-sequence state park/restore.

The shape follows llama.cpp's `batched` and `parallel` examples.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import llama_cpp as lc

from .config import MAX_SEQUENCES
from .errors import EagerError
from .machine import default_threads, extra_buffers_enabled


class LlamaError(EagerError):
    """llama.cpp refused: a model it cannot load (a corrupt or unsupported GGUF), a context it cannot
    allocate, a failed decode. Worded for a user in one line, with llama.cpp's own last error line."""


class KVCacheFull(LlamaError):
    """llama_decode returned 1: no free KV cells for the batch. The cache is unchanged."""


# --- logging -------------------------------------------------------------------------------------
# llama.cpp logs a lot to stderr. We keep its recent lines to explain failures and show them only
# when EAGER_LOCAL_VERBOSE is set.
_recent_log: deque[str] = deque(maxlen=40)
_VERBOSE = bool(os.environ.get("EAGER_LOCAL_VERBOSE"))


@lc.llama_log_callback
def _log_callback(level, text, user_data):  # pragma: no cover - called from C
    line = text.decode("utf-8", "replace") if text else ""
    _recent_log.append(line.rstrip("\n"))
    if _VERBOSE:
        sys.stderr.write(line)


_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _backend_ready = True


def _last_error_line() -> str:
    for line in reversed(_recent_log):
        low = line.lower()
        if "error" in low or "failed" in low or "invalid" in low:
            return line.strip()
    return ""


# --- threads -------------------------------------------------------------------------------------
# --- model ---------------------------------------------------------------------------------------
class Model:
    """A loaded GGUF model: vocabulary, tokenizer, chat template, sizes."""

    def __init__(self, path: str | os.PathLike, *, n_gpu_layers: int = 0, vocab_only: bool = False):
        """vocab_only: load the tokenizer and chat template without the weights (a process that only
        builds prompts, such as the driver of a Ray evaluation, whose actors hold the weights)."""
        _init_backend()
        self.path = Path(path)
        self.n_gpu_layers = n_gpu_layers
        params = lc.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = extra_buffers_enabled()
        params.vocab_only = vocab_only
        self._model = lc.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            detail = _last_error_line()
            raise LlamaError(f"llama.cpp could not load {self.path}" + (f": {detail}" if detail else ""))
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(self._model)
        self.n_layer = lc.llama_model_n_layer(self._model)
        self.description = self._desc()
        self._pieces: dict[int, bytes] = {}
        # A boolean mask over the vocabulary: end-of-generation tokens (EOS, EOT, <|im_end|>, ...).
        self.eog_mask = np.array(
            [lc.llama_vocab_is_eog(self._vocab, t) for t in range(self.n_vocab)], dtype=bool
        )

    # sizes --------------------------------------------------------------------------------------
    def kv_bytes_per_cell(self) -> int:
        """Bytes one token occupies in an f16 KV cache (K and V over all layers)."""
        n_embd = lc.llama_model_n_embd(self._model)
        n_head = max(1, lc.llama_model_n_head(self._model))
        n_head_kv = lc.llama_model_n_head_kv(self._model) or n_head
        return 2 * self.n_layer * (n_embd // n_head) * n_head_kv * 2

    def _desc(self) -> str:
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self._model, buf, ctypes.sizeof(buf))
        return buf.value.decode("utf-8", "replace")

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buf, ctypes.sizeof(buf))
        if n < 0:
            return None
        if n >= ctypes.sizeof(buf):  # long values (chat templates) need a bigger buffer
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self._model, key.encode(), buf, ctypes.sizeof(buf))
        return buf.value.decode("utf-8", "replace")

    # tokens -------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            buf = (lc.llama_token * n_max)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens rendered), cached."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def detokenize(self, tokens) -> str:
        # Join bytes first: one character may span several tokens.
        return b"".join(self.piece(int(t)) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(self.eog_mask[token])

    def single_token(self, text: str) -> int | None:
        """The id of `text` if the vocabulary has it as one token (e.g. `</think>`), else None."""
        ids = self.tokenize(text, add_special=False, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    # chat ---------------------------------------------------------------------------------------
    def chat_template(self) -> str | None:
        return self.metadata("tokenizer.chat_template")

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """Render messages with the GGUF's own Jinja chat template (as llama-cpp-python's Llama does)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.chat_template()
        if not template:
            raise LlamaError(f"{self.path.name} has no chat template; use --raw")
        bos = self._special_text(lc.llama_vocab_bos(self._vocab))
        eos = self._special_text(lc.llama_vocab_eos(self._vocab))
        formatter = Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=bos, add_generation_prompt=add_generation_prompt
        )
        return formatter(messages=messages).prompt

    def chat_template_has_bos(self, text: str) -> bool:
        """Whether rendered chat text already starts with BOS (then tokenizing must not add another)."""
        bos = lc.llama_vocab_bos(self._vocab)
        return not self.adds_bos() or (bos >= 0 and text.startswith(self._special_text(bos)))

    def _special_text(self, token: int) -> str:
        return self.piece(token).decode("utf-8", "replace") if token >= 0 else ""

    def adds_bos(self) -> bool:
        return bool(lc.llama_vocab_get_add_bos(self._vocab))

    def close(self) -> None:
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        self.close()


# --- context -------------------------------------------------------------------------------------
PROMPT_LOGITS_CHUNK = 128  # prompt tokens per decode when every token's logits are wanted
# llama.cpp's CPU matrix products take another kernel for batches of few rows (fewer than 8 for a
# Q4_K model on x86, 1 for Q4_1), whose results differ from the many-row kernel's in the last bits
# and can change the next token. A prefill keeps every chunk at least this long, so a prompt's
# cells and logits are the same however it is split into chunks (BENCHMARKS.md, "Prompt cache").
EXACT_BATCH_ROWS = 16


@dataclass
class ContextSize:
    cells: int  # KV cells of each sequence's stream, or of the one pool all share when unified
    n_seq_max: int
    n_batch: int
    unified: bool = False

    @property
    def n_ctx(self) -> int:
        return self.cells if self.unified else self.cells * self.n_seq_max


def _flash_attention(model: "Model", unified: bool) -> int:
    """llama.cpp's flash-attention setting for a context of this model.

    With streams on the CPU it is off: llama.cpp's CPU flash-attention kernel decodes rows with a
    long history at about half the speed of the plain path (scripts/bench_engine.py, section
    layout; BENCHMARKS.md, "Engine speed, fork cost and memory"). A unified cache keeps llama.cpp's
    choice: there its kernel skips the cells of other sequences, so a row's result does not depend
    on where they sit (chat compares a continued branch with a fresh context). Layers on a GPU:
    llama.cpp's choice.
    EAGER_LOCAL_FLASH_ATTN=1 or 0 overrides.
    """
    forced = os.environ.get("EAGER_LOCAL_FLASH_ATTN")
    if forced in ("0", "1"):
        return lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if forced == "1" else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    if unified or model.n_gpu_layers:
        return lc.LLAMA_FLASH_ATTN_TYPE_AUTO
    return lc.LLAMA_FLASH_ATTN_TYPE_DISABLED


class Context:
    """One llama.cpp context: many sequences decoded together, in one of two KV layouts.

    - streams (the default): each sequence has a KV stream of its own and a generated row attends
      over its own cells only. A fork copies the parent's stream (llama.cpp does it before the
      next decode; milliseconds, far below re-prefilling: BENCHMARKS.md, "Engine speed, fork cost
      and memory") and a shared prefix is stored once per branch. llama.cpp splits a batch into one
      micro-batch per run of consecutive sequence ids (each re-reads all weights), so callers keep
      the ids they decode together contiguous and in increasing order.
    - unified: one pool of cells; a fork only tags the parent's cells with the child's id, so a
      long shared prefix (a chat history) is stored once. But every row attends over all cells in
      use, every prompt's and every branch's, so a step costs rows x all cells, and many rows with
      a long history decode several times slower than with streams (scripts/bench_engine.py,
      section layout; BENCHMARKS.md, "Engine speed, fork cost and memory").
    """

    def __init__(self, model: Model, size: ContextSize, *, n_threads: int | None = None):
        self.model = model
        self.size = size
        self.n_threads = n_threads or default_threads()
        params = lc.llama_context_default_params()
        params.n_ctx = size.n_ctx
        params.n_batch = size.n_batch
        params.n_ubatch = min(size.n_batch, 512)
        params.n_seq_max = size.n_seq_max
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.kv_unified = size.unified
        params.flash_attn_type = _flash_attention(model, size.unified)
        params.no_perf = True
        self._ctx = lc.llama_init_from_model(model._model, params)
        if not self._ctx:
            detail = _last_error_line()
            raise LlamaError(
                f"llama.cpp could not create a context of {size.n_ctx} KV cells"
                + (f": {detail}" if detail else "")
            )
        self.n_ctx = lc.llama_n_ctx(self._ctx)
        self.cells_per_seq = lc.llama_n_ctx_seq(self._ctx)  # llama.cpp rounds up to 256; all cells if unified
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch, self._arrays = _make_batch(size.n_batch)
        self._copies_pending = False  # forks whose stream copy llama.cpp makes at the next decode

    # decoding -----------------------------------------------------------------------------------
    def decode(self, tokens, positions, seq_ids, want_logits) -> np.ndarray:
        """Decode one batch; return the logits of the rows flagged in `want_logits`, in order.

        The result is a zero-copy view into llama.cpp's buffer: it is valid until the next decode.
        Raises KVCacheFull when the cache has no room (llama.cpp leaves the cache unchanged).
        """
        n = len(tokens)
        if n == 0:
            return np.empty((0, self.model.n_vocab), dtype=np.float32)
        if n > self.size.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds n_batch={self.size.n_batch}")
        arr = self._arrays
        arr.token[:n] = tokens
        arr.pos[:n] = positions
        arr.seq[:n, 0] = seq_ids
        arr.logits[:n] = want_logits
        self._batch.n_tokens = n
        rc = lc.llama_decode(self._ctx, self._batch)
        if rc in (0, 1):
            self._copies_pending = False  # llama.cpp applied queued stream copies before placing the batch
        if rc == 1:
            raise KVCacheFull(f"KV cache full ({self.n_ctx} cells)")
        if rc != 0:
            detail = _last_error_line()
            raise LlamaError(f"llama_decode failed with code {rc}" + (f": {detail}" if detail else ""))
        n_out = int(np.count_nonzero(arr.logits[:n]))
        ptr = lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.model.n_vocab))

    def prefill(self, tokens: list[int], seq_id: int, start_pos: int = 0, on_logits=None) -> np.ndarray:
        """Decode a prompt into one sequence in chunks of at most n_batch tokens and, where the
        prompt allows, at least EXACT_BATCH_ROWS (`chunk_bounds`); return the last token's logits (copy).

        With `on_logits`, every token's logits, chunk by chunk: `on_logits(index in tokens of the
        chunk's first token, their logits view)`, chunks of at most PROMPT_LOGITS_CHUNK tokens (llama.cpp
        keeps its output buffer as large as the most logits one batch asked for).
        """
        step = self.size.n_batch if on_logits is None else min(self.size.n_batch, PROMPT_LOGITS_CHUNK)
        logits = None
        for begin, end in chunk_bounds(len(tokens), step):
            chunk = tokens[begin:end]
            want = np.zeros(len(chunk), dtype=np.int8)
            if on_logits is not None:
                want[:] = 1
            elif begin + len(chunk) == len(tokens):
                want[-1] = 1
            pos = np.arange(start_pos + begin, start_pos + begin + len(chunk), dtype=np.int32)
            logits = self.decode(chunk, pos, np.full(len(chunk), seq_id, dtype=np.int32), want)
            if on_logits is not None:
                on_logits(begin, logits)
        return np.array(logits[-1], copy=True)

    # sequences ----------------------------------------------------------------------------------
    def fork(self, src: int, dst: int) -> None:
        """Make `dst` (empty) continue `src`'s whole prefix; nothing is recomputed.

        Unified: `dst` shares `src`'s cells. Streams: llama.cpp copies the stream's data before the
        next decode (only whole sequences: a partial copy between streams aborts the process).
        """
        lc.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        self._copies_pending = not self.size.unified

    def move(self, src: int, dst: int) -> None:
        """Renumber a sequence: `dst` (empty) takes over `src`'s cells and `src` becomes empty."""
        self.fork(src, dst)
        self.drop(src)  # the queued copy reads the data, which stays until something overwrites it

    def drop(self, seq_id: int) -> None:
        """Forget a sequence; cells no other sequence uses become free."""
        lc.llama_memory_seq_rm(self._mem, seq_id, -1, -1)

    def truncate(self, seq_id: int, length: int) -> None:
        """Keep only the first `length` positions of a sequence."""
        lc.llama_memory_seq_rm(self._mem, seq_id, length, -1)

    def clear(self) -> None:
        lc.llama_memory_clear(self._mem, False)

    def seq_length(self, seq_id: int) -> int:
        return lc.llama_memory_seq_pos_max(self._mem, seq_id) + 1

    def park(self, seq_id: int) -> bytes:
        """The sequence's full state (its KV cells) as bytes, so it can be dropped and restored later."""
        if self._copies_pending:
            self._apply_copies()
        size = lc.llama_state_seq_get_size(self._ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        written = lc.llama_state_seq_get_data(self._ctx, buf, size, seq_id)
        if written != size:
            raise LlamaError(f"could not save state of sequence {seq_id}")
        return bytes(buf)

    def restore(self, state: bytes, seq_id: int) -> None:
        """Load a parked state into `seq_id` (which must be empty)."""
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if lc.llama_state_seq_set_data(self._ctx, buf, len(state), seq_id) == 0:
            raise KVCacheFull(f"no room to restore a sequence of {len(state)} bytes")

    def _apply_copies(self) -> None:
        """Make llama.cpp carry out queued stream copies now (it does so at the start of a decode):
        decode one throwaway token in an empty sequence, then drop it."""
        spare = next((s for s in range(self.size.n_seq_max - 1, -1, -1) if self.seq_length(s) == 0), None)
        if spare is None:
            raise LlamaError("no empty sequence to apply pending KV copies with")
        self.decode([0], [0], [spare], [0])
        self.drop(spare)

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            lc.llama_free(self._ctx)
            self._ctx = None

    def __del__(self):
        self.close()


def chunk_bounds(n: int, step: int) -> list[tuple[int, int]]:
    """[begin, end) of the chunks a prefill of n tokens decodes: `step` tokens each, except that a
    last chunk shorter than EXACT_BATCH_ROWS takes tokens from the one before it."""
    bounds = [(begin, min(begin + step, n)) for begin in range(0, n, step)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < EXACT_BATCH_ROWS:
        cut = n - EXACT_BATCH_ROWS
        bounds[-2:] = [(bounds[-2][0], cut), (cut, n)]
    return bounds


@dataclass
class _BatchArrays:
    token: np.ndarray
    pos: np.ndarray
    n_seq: np.ndarray
    seq: np.ndarray
    seq_ptrs: object
    logits: np.ndarray


def _make_batch(capacity: int):
    """A llama_batch whose arrays are numpy buffers we own, so filling it is vectorised.

    (llama_batch_init mallocs one seq_id array per token, which can only be filled in a Python loop.)
    Each token belongs to exactly one sequence: shared prefixes are made with fork(), not by tagging
    tokens with several sequence ids.
    """
    arrays = _BatchArrays(
        token=np.zeros(capacity, dtype=np.int32),
        pos=np.zeros(capacity, dtype=np.int32),
        n_seq=np.ones(capacity, dtype=np.int32),
        seq=np.zeros((capacity, 1), dtype=np.int32),
        seq_ptrs=(ctypes.POINTER(lc.llama_seq_id) * capacity)(),
        logits=np.zeros(capacity, dtype=np.int8),
    )
    row_bytes = arrays.seq.strides[0]
    base = arrays.seq.ctypes.data
    for i in range(capacity):
        arrays.seq_ptrs[i] = ctypes.cast(base + i * row_bytes, ctypes.POINTER(lc.llama_seq_id))
    batch = lc.llama_batch()
    batch.n_tokens = 0
    batch.token = arrays.token.ctypes.data_as(ctypes.POINTER(lc.llama_token))
    batch.embd = ctypes.POINTER(ctypes.c_float)()
    batch.pos = arrays.pos.ctypes.data_as(ctypes.POINTER(lc.llama_pos))
    batch.n_seq_id = arrays.n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
    batch.seq_id = arrays.seq_ptrs
    batch.logits = arrays.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
    return batch, arrays
