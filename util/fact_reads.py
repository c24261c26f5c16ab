"""Read module inputs/outputs at the fact token of many (prompt, subject) pairs, in batches."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from util.architectures import model_device
from util.hooks import capture, forward_until
from util.layer_replay import LayerReplay
from util.requests import fill_prompt
from util.tokens import encode, fact_token_index, pad, pad_token_id, padded_positions

Reads = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


class FactReader:
    """Reads at the fact tokens of fixed prompts, again as often as asked, while weights change.

    Prompts are tokenized and batched once. With ``layers_path`` and ``resumable`` layers, a read
    told which layer changed first since the previous read (``start_at``) runs only the layers from
    there (:class:`util.layer_replay.LayerReplay`); ``stop_after`` must then lie inside a layer.
    """

    def __init__(self, model: nn.Module, tok, prompts: Sequence[str], subjects: Sequence[str], fact_token: str,
                 batch_size: int = 64, layers_path: str | None = None, resumable: Iterable[int] = ()) -> None:
        self.model = model
        device = model_device(model)
        self.chunks: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            seqs = [encode(tok, fill_prompt(prompts[i], subjects[i])) for i in chunk]
            index = [fact_token_index(tok, prompts[i], subjects[i], fact_token) for i in chunk]
            ids, mask = pad(seqs, pad_token_id(tok))
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            self.chunks.append((inputs, torch.arange(len(seqs)), padded_positions(index, mask)))
        resumable = list(resumable)
        self.replays = ([LayerReplay(model, layers_path, resumable, **inputs) for inputs, _, _ in self.chunks]
                        if layers_path is not None and resumable else None)

    @torch.no_grad()
    def read(self, input_of: Sequence[str] = (), output_of: Sequence[str] = (), stop_after: str | None = None,
             start_at: int | None = None) -> Reads:
        """(inputs, outputs): per module name a ``(len(prompts), dim)`` tensor at each fact token."""
        ins: dict[str, list[torch.Tensor]] = {n: [] for n in input_of}
        outs: dict[str, list[torch.Tensor]] = {n: [] for n in output_of}
        for c, (inputs, rows, cols) in enumerate(self.chunks):
            with capture(self.model, input_of=input_of, output_of=output_of) as seen:
                if self.replays is not None and stop_after is not None:
                    self.replays[c].forward_until(stop_after, start_at)
                else:
                    forward_until(self.model, stop_after, **inputs)
            for name in input_of:  # each module's tensors stay on its device (models split by a device map)
                ins[name].append(_at(seen.inputs[name], rows, cols))
            for name in output_of:
                outs[name].append(_at(seen.outputs[name], rows, cols))
        return {n: torch.cat(v) for n, v in ins.items()}, {n: torch.cat(v) for n, v in outs.items()}


def read_at_fact_tokens(
    model: nn.Module,
    tok,
    prompts: Sequence[str],
    subjects: Sequence[str],
    fact_token: str,
    input_of: Sequence[str] = (),
    output_of: Sequence[str] = (),
    stop_after: str | None = None,
    batch_size: int = 64,
) -> Reads:
    """One read of :class:`FactReader`: (inputs, outputs) per module name at each fact token."""
    reader = FactReader(model, tok, prompts, subjects, fact_token, batch_size)
    return reader.read(input_of, output_of, stop_after)


def _at(hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``hidden[rows, cols]`` on the hidden state's own device."""
    return hidden[rows.to(hidden.device), cols.to(hidden.device)]
