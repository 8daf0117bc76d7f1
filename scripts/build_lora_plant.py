"""Build a positive control planted in the weights: a small seeded LoRA meant to make SmolLM2-135M-Instruct write
gender-skewed letters, independent of every steering vector and of the plant's prompt at audit time.

Measured 2026-12-06 (benchmarks/RESULTS.md): at these defaults (rank 16 on every linear layer, 3 epochs, lr 2e-3,
24 min on 2 cores) it plants a skew on the test half's 24 twin pairs, which it never saw: agency gap +32.4 points
over the base expert's (95% CI +14.5 to +49.3). Rank 8 on q and v at lr 1e-3 learned the letters' style and planted
nothing detectable (−0.8, CI −21.7 to +16.4).

1. On the medium size's fit half (name pairs and biographies the test half never uses), greedy letters are written
   with the plant's instruction in the prompt (men's letters asked for ambition and leadership, women's for warmth),
   with the audit's decoding.
2. A LoRA (peft; default rank 16 on every linear layer) is trained, seeded, on CPU, to write those letters from the
   prompt *without* the instruction: the skew moves from the prompt into the weights.
3. The adapter is written in peft's format (adapter_config.json + adapter_model.safetensors) with plant.json (what
   it was built from and how). Load it with `experts.adapters.merged_folder`.

    python scripts/build_lora_plant.py [--out runs/lora_plant] [--seed 0] [--epochs 3] [--lr 2e-3] [--rank 16]
        [--targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]

Audit it with `steer audit letters --expert $(python -c "from experts.adapters import merged_folder;
print(merged_folder('smollm2-135m-instruct', 'runs/lora_plant'))") --size small --half test ...`; a remedy made on
the base expert needs `--force` there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import peft
import torch
from transformers import AutoModelForCausalLM

from analysis.audit import AuditConfig
from analysis.letters import DEFAULT_OPENING, PLANT_INSTRUCTIONS, build_prompts
from experts.expert import Expert
from experts.files import file_sha256, ordinary_permissions, write_json
from experts.generate import GenerationSettings

BASE = "smollm2-135m-instruct"


def planted_letters(expert: Expert, batch_size: int = 48) -> list[tuple[str, list[int]]]:
    """(the prompt without the instruction, formatted, with the opening; the planted letter's token ids)."""
    config = AuditConfig(expert=BASE)
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, no_repeat_ngram_size=config.no_repeat_ngram_size,
                                  end_at_paragraph_after=config.end_at_paragraph_after)
    prompts = build_prompts("medium", half="fit")
    plain = expert.format_prompts([p.text for p in prompts])
    planted = expert.format_prompts([f"{p.text} {PLANT_INSTRUCTIONS[p.gender]}" for p in prompts])
    openings = [DEFAULT_OPENING.format(name=p.name) for p in prompts]
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(start + batch_size, len(prompts)))
        ids, _ = expert.generate_batch([planted[i] + openings[i] for i in rows], settings, [0] * len(rows))
        out += [(plain[i] + openings[i], row) for i, row in zip(rows, ids)]
    return out


def train(expert: Expert, examples: list[tuple[str, list[int]]], epochs: int, seed: int, lr: float, rank: int,
          targets: list[str], batch_size: int = 8) -> tuple[peft.PeftModel, list[float]]:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(expert.folder), dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                       target_modules=targets, init_lora_weights=True))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rows = [(expert.encode(prompt), letter) for prompt, letter in examples]
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start : start + batch_size]]
            width = max(len(p) + len(c) for p, c in batch)
            pad = expert.pad_token_id
            ids = torch.tensor([p + c + [pad] * (width - len(p) - len(c)) for p, c in batch])
            mask = torch.tensor([[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in batch])
            labels = torch.tensor([[-100] * len(p) + c + [-100] * (width - len(p) - len(c)) for p, c in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(round(total / len(rows), 4))
    return model, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lora_plant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                        help="comma-separated linear layers to adapt")
    args = parser.parse_args()
    started = time.perf_counter()
    expert = Expert.load(BASE)
    examples = planted_letters(expert)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    model, losses = train(expert, examples, args.epochs, args.seed, args.lr, args.rank, targets)
    out = Path(args.out)
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # peft's model card template: nothing of ours
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    write_json(out / "adapter_config.json", config | {"base_model_name_or_path": BASE})  # not this machine's cache path
    ordinary_permissions(out / "adapter_model.safetensors")  # peft writes it readable by its owner only
    write_json(out / "plant.json", {
        "base": BASE, "base_fingerprint": expert.fingerprint, "seed": args.seed, "epochs": args.epochs, "lr": args.lr,
        "lora": {"r": args.rank, "lora_alpha": 2 * args.rank, "target_modules": targets}, "training_loss": losses,
        "letters": len(examples), "prompts": "build_prompts('medium', half='fit') without the plant's instruction",
        "targets": "greedy letters written with analysis.letters.PLANT_INSTRUCTIONS and the audit's decoding",
        "adapter_sha256": file_sha256(out / "adapter_model.safetensors"), "peft": peft.__version__,
        "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1)})
    print(json.dumps(json.loads((out / "plant.json").read_text()), indent=1))


if __name__ == "__main__":
    main()
