"""`Expert`: a loaded model with its tokenizer and spec. It owns the text: it formats and tokenizes
prompts, hands token ids down to the generation loop (`experts.generate`) and the capture
(`experts.capture`), and decodes what comes back, so data flows down once."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from experts import compiled, hookpoints, inline, loading, packed, registry, tiny
from experts.bridge import boot_bridge
from experts.capture import ActivationCache, CaptureRequest, Reduce, capture, check_reduce
from experts.errors import EmptyPromptsError, SteerlabError, UnknownHookError
from experts.generate import (
    GenerationResult,
    GenerationSettings,
    LogitsHook,
    ParagraphTokens,
    Prefill,
    StepHook,
    check_batch_size,
    decode,
    row_seed,
)
from experts.hooks import live_handles, remove_all
from experts.spec import ExpertSpec
from experts.tokens import TokenBatch

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _parse_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise SteerlabError(f"unknown device {device!r}; choose cpu, cuda or cuda:N") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise SteerlabError(f"device {device!r} asked for, but this machine has no CUDA device; use cpu")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise SteerlabError(f"device {device!r} does not exist; this machine has cuda:0..{torch.cuda.device_count() - 1}")
    if target.type not in ("cpu", "cuda", "mps"):
        raise SteerlabError(f"unsupported device {device!r}; choose cpu, cuda or cuda:N")
    return target


def _ends_at_paragraphs(settings: GenerationSettings | Sequence[GenerationSettings]) -> bool:
    return any(s.end_at_paragraph_after for s in ([settings] if isinstance(settings, GenerationSettings) else settings))


def _architecture(spec: ExpertSpec, model: PreTrainedModel) -> str:
    """A local folder's architecture is whatever its config says; a registered expert's is in its spec."""
    return model.config.model_type if spec.source == "hf-folder" else spec.architecture


def weights_fingerprint(model: torch.nn.Module, architecture: str) -> str:
    """Short hash of a strided sample of every tensor, read as float32 (tells experts apart cheaply).

    `Expert.load` takes it from the float32 source weights before casting them, so an expert has
    one fingerprint whatever dtype and device it runs in."""
    config = model.config
    digest = hashlib.sha256(f"{architecture}:{config.num_hidden_layers}:{config.hidden_size}".encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            sample = tensor.flatten()[:: max(1, tensor.numel() // 256)][:256]
            digest.update(name.encode() + sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise SteerlabError(f"unknown dtype {dtype!r}; choose one of {', '.join(choices)}")
    return choices[dtype]


class Expert:
    """A white-box expert. The HF `model` is the fast path (generation, TL-named hooks); `bridge`
    is a lazily booted TransformerBridge over a parameter-sharing twin, for names inside attention."""

    def __init__(
        self,
        spec: ExpertSpec,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        folder: Path,
        fingerprint: str | None = None,
    ):
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.folder = folder
        self.architecture = _architecture(spec, model)
        hookpoints.layout_for(self.architecture)  # fail early on an unsupported architecture
        self._fingerprint = fingerprint
        self.packing = packed.unpacked(model, "built by hand")  # `Expert.load` packs where asked

    @classmethod
    def load(cls, name_or_path: str = registry.DEFAULT_EXPERT, *, device: str | None = None,
             dtype: str | torch.dtype | None = None, decoding: str | None = None) -> Expert:
        """Load a named expert or a local HF folder; see `steer experts list`.

        `decoding` (default: `$STEERLAB_DECODING`, else "auto"): "packed" decodes with the 4-bit linears in
        PyTorch's int4 CPU kernel (`experts.packed`: bfloat16 numerics, everything but decoding stays float32);
        "compiled" is "packed" with its decode steps compiled whole where they can be (`experts.compiled`: a compile
        of tens of seconds per batch shape, then about 1.7 times the steps' speed at batch 1); "exact" decodes in the
        model's own dtype; "auto" is "packed" for a packaged expert in float32 on the CPU."""
        spec = registry.resolve(name_or_path)
        hookpoints.layout_for(spec.architecture)
        target = _parse_device(device)
        torch_dtype = _parse_dtype(dtype, target)
        decoding = packed.resolve_decoding(decoding)
        if spec.source == "tiny":
            folder = Path(tempfile.mkdtemp(prefix=f"steerlab-{spec.name}-"))
            model, tokenizer = tiny.build_tiny(spec, folder)
        elif spec.source == "hf-folder":
            model, tokenizer, folder = loading.load_folder(spec)
        else:
            model, tokenizer, folder = loading.load_cached(spec)
        fingerprint = weights_fingerprint(model, _architecture(spec, model))  # of the float32 source, before the cast
        expert = cls(spec, model.to(device=target, dtype=torch_dtype), tokenizer, folder, fingerprint)
        packaged = spec.source not in ("tiny", "hf-folder")  # pack_linears itself declines off the CPU or float32
        if decoding in ("packed", "compiled") or (decoding == "auto" and packaged):
            expert.packing = packed.pack_linears(expert.model)
            if expert.packing.decoding == "packed":
                expert.packing = replace(expert.packing, inline_blocks=inline.InlineSteps(expert.model).writable)
            if decoding == "compiled" and expert.packing.decoding == "packed":
                compiled.enable(expert.model)
                expert.packing = replace(expert.packing, compiled_steps=True)
        else:
            expert.packing = packed.unpacked(expert.model, "exact asked for" if decoding == "exact"
                                             else "auto packs only a packaged expert")
        return expert

    # -- facts -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    @property
    def fingerprint(self) -> str:
        """Short hash of the weights as loaded (float32 source), the same in every dtype and on every device.
        An `Expert` built by hand from a model is fingerprinted from that model's weights as given."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model, self.architecture)
        return self._fingerprint

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        """Short hash of the vocabulary: experts with equal ones read each other's token ids."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]

    def info(self) -> dict[str, Any]:
        return {
            **self.spec.to_dict(),
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": self.model.config.vocab_size,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "folder": str(self.folder),
            "fingerprint": self.fingerprint,
            "decoding": self.packing.to_dict(),
        }

    # -- text ---------------------------------------------------------------------------------
    def format_prompts(self, prompts: Sequence[str], *, chat: bool | None = None, system: str | None = None) -> list[str]:
        """Apply the chat template (instruct experts, by default) or leave the text as is (base)."""
        use_chat = self.spec.chat_template if chat is None else chat
        if use_chat and self.tokenizer.chat_template is None:
            raise SteerlabError(f"expert {self.name!r} has no chat template; pass chat=False")
        if not use_chat:
            return list(prompts)
        prefix = [{"role": "system", "content": system}] if system else []
        return [
            self.tokenizer.apply_chat_template(
                [*prefix, {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]

    def format_conversation(self, messages: Sequence[Mapping[str, str]]) -> str:
        """A conversation ({'role', 'content'} messages ending with the user's) as the text the expert continues:
        through its chat template; a base expert gets a lone user message as it is, and anything longer as a plain
        transcript ("System: ...", "User: ...", "Assistant: ...") ending with "Assistant:"."""
        if self.spec.chat_template:
            return self.tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                                      add_generation_prompt=True)
        if len(messages) == 1:
            return messages[0]["content"]
        turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join([*turns, "Assistant:"])

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Left-pad `texts`. Special tokens are added only to text that has none of a template's."""
        if not texts:
            raise EmptyPromptsError()
        encoded = [self.encode(t) for t in texts]
        if any(len(ids) == 0 for ids in encoded):
            raise EmptyPromptsError("tokens (a prompt tokenized to nothing)")
        return self.pad(encoded)

    def pad(self, rows: Sequence[Sequence[int]]) -> TokenBatch:
        """Left-pad token id rows into a batch on the expert's device."""
        return TokenBatch.left_padded(rows, self.pad_token_id, self.device)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, with special tokens only if the text carries none of a template's."""
        templated = any(tok in text for tok in self.tokenizer.all_special_tokens if tok)
        return self.tokenizer(text, add_special_tokens=not templated)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @cached_property
    def eos_ids(self) -> set[int]:
        """Token ids that end generation: the tokenizer's EOS and any the generation config adds."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids |= set(configured) if isinstance(configured, list) else {configured}
        return {i for i in ids if i is not None}

    # -- hooks ---------------------------------------------------------------------------------
    def hook_names(self) -> list[str]:
        """TL names served at HF speed by plain torch hooks (more via `bridge_hook_names`)."""
        return hookpoints.fast_hook_names(self.n_layers)

    def bridge_hook_names(self) -> list[str]:
        return list(self.bridge.hook_dict)

    def hook_point(self, name: str) -> hookpoints.HookPoint:
        """The HF boundary of a fast TL name (TL 3's or TL 4's); unknown names get suggestions."""
        point = hookpoints.resolve_hook(name, self.architecture, self.n_layers)
        if point is None:
            hookpoints.check_known(name, self.hook_names())
        return point

    def _split_hook_names(self, names: Sequence[str]) -> tuple[list[hookpoints.HookPoint], list[str]]:
        """Fast names as hook points in forward order, and the names only the bridge serves."""
        fast, slow, seen = [], [], set()
        for name in names:  # a TL 4 name and its legacy alias are one tensor, captured once
            legacy = hookpoints.legacy_name(name, self.architecture)
            if legacy in seen:
                continue
            seen.add(legacy)
            point = hookpoints.resolve_hook(name, self.architecture, self.n_layers)
            if point is not None:
                fast.append(point)
                continue
            if legacy not in self.bridge.hook_dict:
                raise UnknownHookError(name, self.hook_names() + self.bridge_hook_names())
            slow.append(legacy)
        order = {n: i for i, n in enumerate(self.hook_names())}
        return sorted(fast, key=lambda p: order[p.name]), slow

    @cached_property
    def bridge(self):
        """TransformerBridge over a parameter-sharing twin (booted on first use)."""
        return boot_bridge(self.model, self.tokenizer, self.folder, self.device)

    def unembed(self, resid: Tensor) -> Tensor:
        """Logits from residual-stream vectors (`..., d_model`): final norm, unembedding, any soft-capping."""
        norm = self.model.get_submodule(hookpoints.layout_for(self.architecture).final_norm)
        logits = self.model.get_output_embeddings()(norm(resid.to(device=self.device, dtype=self.dtype)))
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    # -- hooks attached ------------------------------------------------------------------------
    def hooks(self) -> list:
        """The hook handles now attached to this expert (steering, captures), each with its owner."""
        return live_handles(self.model)

    def reset_hooks(self) -> int:
        """Remove every hook steerlab attached to this expert (as TransformerLens's `reset_hooks`);
        returns how many handles were removed. Useful after re-running a notebook cell with `patch()`."""
        return remove_all(self.model)

    # -- running -------------------------------------------------------------------------------
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        num_samples: int = 1,
        stop_at_eos: bool = True,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        end_at_paragraph_after: int = 0,
        chat: bool | None = None,
        system: str | None = None,
        batch_size: int = 8,
        logits_hook: LogitsHook | None = None,
        progress: bool = False,
        prefill: Prefill | None = None,
    ) -> GenerationResult:
        """Generate `num_samples` continuations of each prompt, `batch_size` rows at a time.

        Greedy by default; `do_sample=True` samples with `temperature`, `top_k` (0: off) and `top_p` (1: off);
        `repetition_penalty` > 1 discourages tokens the row has already generated, `no_repeat_ngram_size` forbids
        repeating a token n-gram, `end_at_paragraph_after` ends a row at its first paragraph break after that many
        tokens (see `GenerationSettings`);
        each row from its own generator seeded from (`seed`, prompt, sample index). `chat` applies the chat
        template (default: when the expert has one), with an optional `system` message. `logits_hook(logits,
        state)` may re-weight each step's logits (reward-augmented decoding); `prefill` continues a forward
        pass already run on these prompts (one sample of each prompt, in one batch). Settings kept as one value
        pass back in as `**settings.keywords()`. Returns a `GenerationResult` (texts, token ids, finish reasons).
        """
        settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                      top_k=top_k, top_p=top_p, seed=seed, num_samples=num_samples, stop_at_eos=stop_at_eos,
                                      repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                      end_at_paragraph_after=end_at_paragraph_after)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or any(not p.strip() for p in prompts):
            raise EmptyPromptsError()
        check_batch_size(batch_size)
        formatted = self.format_prompts(prompts, chat=chat, system=system)
        rows = [(i, s) for i in range(len(prompts)) for s in range(settings.num_samples)]
        if prefill is not None and (settings.num_samples > 1 or len(rows) > batch_size):
            raise SteerlabError("a reused prefill covers one batch of one sample per prompt")
        token_ids: list[list[int]] = []
        reasons: list[str] = []
        for start in tqdm(range(0, len(rows), batch_size), disable=not progress, desc="generate", unit="batch"):
            chunk = rows[start : start + batch_size]
            ids, why = self.generate_batch([formatted[i] for i, _ in chunk], settings,
                                           [row_seed(settings.seed, prompts[i], s) for i, s in chunk],
                                           logits_hook=logits_hook, prefill=prefill, rows=[i for i, _ in chunk],
                                           n_prompts=len(prompts))
            token_ids += ids
            reasons += why
        return GenerationResult(
            prompts=[prompts[i] for i, _ in rows],
            formatted_prompts=[formatted[i] for i, _ in rows],
            sample_index=[s for _, s in rows],
            texts=[self.decode(ids) for ids in token_ids],
            token_ids=token_ids,
            finish_reasons=reasons,
            config=settings,
            expert=self.name,
        )

    def generate_batch(
        self,
        formatted: Sequence[str],
        settings: GenerationSettings | Sequence[GenerationSettings],
        seeds: Sequence[int],
        *,
        logits_hook: LogitsHook | None = None,
        prefill: Prefill | None = None,
        rows: Sequence[int] | None = None,
        n_prompts: int | None = None,
        on_step: StepHook | None = None,
    ) -> tuple[list[list[int]], list[str]]:
        """Generate for already formatted prompts in one batch, a seed per row (and settings per row, if given
        as a list); returns token ids and finish reasons. `rows`/`n_prompts` say which prompt of the caller each
        row is, `on_step` sees each step's logits and tokens (see `experts.generate.decode`)."""
        if prefill is not None and tuple(formatted) != prefill.formatted:
            raise SteerlabError("a reused prefill must come from exactly these formatted prompts, in this order")
        return decode(self.model, self.tokenize(formatted), settings, seeds, stop_ids=self.eos_ids,
                      pad_id=self.pad_token_id, logits_hook=logits_hook, prefill=prefill, rows=rows, n_prompts=n_prompts,
                      on_step=on_step, paragraph=self.paragraph_tokens if _ends_at_paragraphs(settings) else None)

    @cached_property
    def paragraph_tokens(self) -> ParagraphTokens:
        """Where this vocabulary's paragraph breaks are (for `end_at_paragraph_after`)."""
        return ParagraphTokens.from_texts(self.tokenizer.batch_decode([[i] for i in range(self.model.config.vocab_size)]))

    def run_with_cache(
        self,
        prompts: str | Sequence[str],
        names: Sequence[str],
        *,
        chat: bool = False,
        batch_size: int = 16,
        progress: bool = False,
        reduce: Reduce = "none",
        mean_from: Sequence[int] | None = None,
        return_logits: bool = False,
        keep_norms: bool = False,
    ) -> ActivationCache | tuple[Tensor, ActivationCache]:
        """Capture activations at TL-named hooks (`names`) for `prompts` (raw text; `chat=True` applies the
        chat template first). Returns an `ActivationCache`, or `(logits, cache)` with `return_logits` as
        TransformerLens does (logits left-padded, zeros on padding; the forward then runs to the end).

        `reduce`: `"none"` keeps `(prompts, pos, ...)` left-padded (zeros on padding); `"last"` each prompt's
        last token; `"mean"` the mean over each prompt's tokens from its `mean_from` offset (default 0); or a
        list of token positions (negative from the end). `keep_norms` also keeps each position's norm
        (`cache.norms`), e.g. to calibrate by the typical norm. See `experts.capture`.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or any(not p.strip() for p in prompts):
            raise EmptyPromptsError()
        if not names:
            raise EmptyPromptsError("hook names")
        check_batch_size(batch_size)
        reduce = check_reduce(reduce)
        if mean_from is not None and (reduce != "mean" or len(mean_from) != len(prompts)):
            raise SteerlabError("mean_from needs reduce='mean' and one offset per prompt")
        fast, slow = self._split_hook_names(names)
        if slow and reduce != "none":
            raise SteerlabError(f"names inside attention ({slow[0]}) are captured whole; use reduce='none' for them")
        full = self.tokenize(self.format_prompts(prompts, chat=chat))
        request = CaptureRequest(fast, slow, reduce, mean_from, return_logits, keep_norms)
        kept, norms, logits = capture(self.model, full, request, bridge=self.bridge if slow else None,
                                      batch_size=batch_size, progress=progress)
        unique = list(dict.fromkeys(names))  # as asked: a TL 4 name keys the tensor its legacy alias names
        legacy = {name: hookpoints.legacy_name(name, self.architecture) for name in unique}
        norms = {name: norms[legacy[name]] for name in unique if legacy[name] in norms}
        cache = ActivationCache(
            activations={name: kept[legacy[name]] for name in unique},
            tokens=full.input_ids,
            attention_mask=full.attention_mask,
            prompts=prompts,
            metadata={"expert": self.name, "names": unique, "chat": chat, "n_layers": self.n_layers},
            reduce=reduce,
            norms=norms,
        )
        return (logits, cache) if return_logits else cache

    def __repr__(self) -> str:
        return f"Expert({self.name!r}, n_layers={self.n_layers}, d_model={self.d_model}, device={self.device}, dtype={self.dtype})"
