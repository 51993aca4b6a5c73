"""A tiny pre-trained / instruction-tuned model pair for the offline demo, built from scratch on CPU.

Four steps, each a function and a subcommand: `corpus` writes a plain-English corpus (docstrings of
the Python standard library, parsed with `ast` and never imported, plus the demo dataset's text);
`tokenizer` trains a LLaMA-style BPE tokenizer (Metaspace, byte fallback) on it; `pretrain` trains
a tiny grouped-query-attention `LlamaForCausalLM` on random windows of the corpus; `finetune`
tunes that base model on the dataset's prompt -> response pairs, with the loss on the response
only. Nothing touches the network, and a fixed seed gives the same weights every run.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch

from .atomic import atomic_dir, atomic_write_text
from .cli import positive_int
from .dataset import read_dataset
from .progress import Progress, progress

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2, as in LLaMA
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # ids 3..258, the byte fallback
METASPACE = "▁"
MAX_LENGTH = 512  # max_position_embeddings of the demo models
WINDOW = 128  # pre-training sequence length
DEFAULT_CORPUS_BYTES = 2_500_000
DEFAULT_VOCAB_SIZE = 4000
DEFAULT_PRETRAIN_STEPS = 900  # about 140 s on 2 idle CPU cores (6.5 steps/s, 2026-12-03)
DEFAULT_FINETUNE_STEPS = 1200  # about 80 s on 2 idle CPU cores (15 steps/s)
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}  # third-party code, test suites


# --- outputs ---------------------------------------------------------------------------------


# --- corpus ----------------------------------------------------------------------------------


def stdlib_sources() -> list[Path]:
    """The standard library's own .py files, sorted so that the corpus order is fixed."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(root).parts[:-1]))


def docstrings(path: Path) -> Iterator[str]:
    """Module, class and function docstrings of one file, read by parsing it (importing runs code)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError) as error:  # a few files are Python 2 or deliberately broken
        log.debug("skipping %s: %s", path, error)
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node)
            if text:
                yield text


def paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs with all whitespace collapsed to single spaces."""
    for block in re.split(r"\n\s*\n", text):
        paragraph = " ".join(block.split())
        if paragraph:
            yield paragraph


def is_prose(paragraph: str) -> bool:
    """Plain sentences only: doctests, signatures, tables and code are mostly symbols."""
    if len(paragraph) < 40 or len(paragraph.split()) < 6 or ">>>" in paragraph:
        return False
    prose_chars = sum(c.isalpha() or c == " " for c in paragraph)
    return prose_chars >= 0.9 * len(paragraph)


def build_corpus(
    output: str | Path, dataset: str | Path, max_bytes: int = DEFAULT_CORPUS_BYTES
) -> list[str]:
    """Write the deduplicated corpus, one paragraph per line: standard-library prose up to
    `max_bytes`, then every paragraph of the dataset's prompts and responses."""
    lines: dict[str, None] = {}  # insertion-ordered set
    size = 0
    for path in progress(stdlib_sources(), "corpus: stdlib docstrings", "file"):
        for paragraph in (p for text in docstrings(path) for p in paragraphs(text) if is_prose(p)):
            if paragraph not in lines and size + len(paragraph.encode()) + 1 <= max_bytes:
                lines[paragraph] = None
                size += len(paragraph.encode()) + 1
        if size >= max_bytes * 0.99:  # full: parsing more files could add only scraps
            break
    stdlib_count = len(lines)
    for sample in read_dataset(dataset):
        lines.update(dict.fromkeys(p for field in (sample.prompt, sample.response) for p in paragraphs(field)))
    text = "".join(f"{line}\n" for line in lines)
    atomic_write_text(output, text)
    log.info(
        "corpus: %d stdlib paragraphs + %d from %s, %d bytes -> %s",
        stdlib_count, len(lines) - stdlib_count, dataset, len(text.encode()), output,
    )
    return list(lines)


# --- tokenizer -------------------------------------------------------------------------------


def _llama_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """The `tokenizers` pipeline of LLaMA's fast tokenizer around a given BPE vocab and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(  # per token: Metaspace drops every "▁" of the first one
        [decoders.ByteFallback(), decoders.Metaspace(replacement=METASPACE, prepend_scheme="first")]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos = ("<s>", vocab["<s>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[bos]
    )
    return tokenizer


def train_tokenizer(corpus: str | Path, output: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train BPE on the corpus lines and save a Hugging Face tokenizer directory.

    The trainer cannot hold the 256 byte tokens without treating them as special, so it learns
    `vocab_size - 256` pieces and the final vocabulary is laid out as LLaMA's: the special tokens,
    the byte tokens, then the learned pieces."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = Path(corpus).read_text(encoding="utf8").splitlines()
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=200,  # rarer characters go through the byte fallback
        show_progress=False,
    )
    learner.train_from_iterator(lines, trainer)
    learned = learner.get_vocab()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for token in sorted(learned, key=learned.get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(pair) for pair in json.loads(learner.to_str())["model"]["merges"]]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_llama_tokenizer(vocab, merges),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=MAX_LENGTH,
        model_input_names=["input_ids", "attention_mask"],  # transformers 4 adds token_type_ids, which LLaMA refuses
    )
    with atomic_dir(output) as tmp:
        tokenizer.save_pretrained(tmp)
    log.info("tokenizer: %d tokens from %d lines -> %s", len(tokenizer), len(lines), output)
    return tokenizer


# --- models ----------------------------------------------------------------------------------


def _deterministic(seed: int) -> torch.Generator:
    """Seed torch, pin the thread count (it changes float sums) and forbid nondeterministic
    kernels; return the generator that draws the training data."""
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5% of the steps, then cosine decay to 10%: keeps a high rate stable."""
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(model, batches: Iterator[dict], steps: int, lr: float, desc: str) -> float:
    """AdamW for `steps` batches; returns the mean loss over the last logging interval."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = _schedule(optimizer, steps)
    every = max(1, steps // 20)
    recent, final = [], math.nan
    model.train()
    with Progress(steps, desc, "step") as bar:
        for step in range(steps):
            loss = model(**next(batches)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            recent.append(loss.item())
            if (step + 1) % every == 0 or step + 1 == steps:
                final, recent = sum(recent) / len(recent), []
                log.info("%s step %d/%d: loss %.4f", desc, step + 1, steps, final)
            bar.update()
    model.eval()
    return final


def save_model(model, tokenizer, output: str | Path) -> None:
    """Safetensors weights with the tokenizer beside them, so one directory loads both."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,  # no pad token; this keeps generate() quiet
    )
    with atomic_dir(output) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    log.info("saved %s", output)


def _token_stream(tokenizer, lines: list[str]) -> torch.Tensor:
    """The corpus as one text file, a paragraph per line. Ending each paragraph with `</s>`
    instead would teach the base model to stop after the first sentence of any prompt."""
    text = "\n".join(lines)
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _windows(stream: torch.Tensor, bos_id: int, batch_size: int, generator: torch.Generator) -> Iterator[dict]:
    """Endless batches of `<s>` + a random slice, WINDOW tokens in all: inputs at inference start
    with `<s>` too. Labels = inputs, as the model shifts them itself."""
    if len(stream) < WINDOW:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one {WINDOW}-token window")
    offsets = torch.arange(WINDOW - 1)
    bos = torch.full((batch_size, 1), bos_id)
    while True:
        starts = torch.randint(0, len(stream) - WINDOW + 2, (batch_size, 1), generator=generator)
        ids = torch.cat([bos, stream[starts + offsets]], dim=1)
        yield {"input_ids": ids, "labels": ids}


def pretrain(
    corpus: str | Path,
    tokenizer_dir: str | Path,
    output: str | Path,
    steps: int = DEFAULT_PRETRAIN_STEPS,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 3e-3,
) -> float:
    """Train the tiny base model from scratch on the corpus; returns the final loss."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    generator = _deterministic(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    stream = _token_stream(tokenizer, Path(corpus).read_text(encoding="utf8").splitlines())
    log.info("pretrain: %d corpus tokens, %d steps of %d x %d", len(stream), steps, batch_size, WINDOW)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in the larger LLaMA models
        max_position_embeddings=MAX_LENGTH,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    batches = _windows(stream, tokenizer.bos_token_id, batch_size, generator)
    loss = train(model, batches, steps, lr, "pretrain")
    save_model(model, tokenizer, output)
    return loss


def _instruction_examples(tokenizer, dataset: str | Path) -> list[dict]:
    """`<s> prompt response</s>` with labels on the response tokens only, found by character
    offset so that how the text is split at the boundary cannot shift them."""
    examples = []
    for sample in read_dataset(dataset):
        text = f"{sample.prompt} {sample.response}{tokenizer.eos_token}"
        # cut by hand: `truncation=True` would stay set in the tokenizer saved with the model
        encoded = tokenizer(text, return_offsets_mapping=True, verbose=False)
        ids = encoded["input_ids"][:MAX_LENGTH]
        labels = [t if start >= len(sample.prompt) else -100 for t, (start, _) in zip(ids, encoded["offset_mapping"])]
        if all(label == -100 for label in labels):
            log.warning("finetune: skipping %s, no response tokens within %d tokens", sample.id, MAX_LENGTH)
            continue
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return examples


def _padded_batches(examples: list[dict], batch_size: int, pad_id: int, generator: torch.Generator) -> Iterator[dict]:
    """Endless shuffled epochs of right-padded batches; padding is masked out and unlabelled."""
    padding = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for i in range(0, len(order), batch_size):
            chunk = [examples[j] for j in order[i : i + batch_size]]
            width = max(len(e["input_ids"]) for e in chunk)
            yield {
                key: torch.tensor([e[key] + [value] * (width - len(e[key])) for e in chunk])
                for key, value in padding.items()
            }


def finetune(
    base_dir: str | Path,
    output: str | Path,
    dataset: str | Path,
    steps: int = DEFAULT_FINETUNE_STEPS,
    seed: int = 0,
    batch_size: int = 8,
    lr: float = 3e-4,
) -> float:
    """Tune the base model on all prompt -> response pairs, many epochs; returns the final loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    generator = _deterministic(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    examples = _instruction_examples(tokenizer, dataset)
    log.info("finetune: %d examples from %s, %d steps of %d", len(examples), dataset, steps, batch_size)
    batches = _padded_batches(examples, batch_size, tokenizer.eos_token_id, generator)
    loss = train(model, batches, steps, lr, "finetune")
    save_model(model, tokenizer, output)
    return loss


# --- command line ----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)

    p = steps.add_parser("corpus", help="write the plain-English pre-training corpus")
    p.add_argument("output")
    p.add_argument("--dataset", default="datasets/demo.tsv")
    p.add_argument("--max-bytes", type=positive_int, default=DEFAULT_CORPUS_BYTES, help="cap on the stdlib part")
    p.set_defaults(run=lambda a: build_corpus(a.output, a.dataset, a.max_bytes))

    p = steps.add_parser("tokenizer", help="train the BPE tokenizer on the corpus")
    p.add_argument("corpus")
    p.add_argument("output")
    p.add_argument("--vocab-size", type=positive_int, default=DEFAULT_VOCAB_SIZE)
    p.set_defaults(run=lambda a: train_tokenizer(a.corpus, a.output, a.vocab_size))

    p = steps.add_parser("pretrain", help="train the base model from scratch")
    p.add_argument("corpus")
    p.add_argument("tokenizer")
    p.add_argument("output")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_PRETRAIN_STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=lambda a: pretrain(a.corpus, a.tokenizer, a.output, a.steps, a.seed))

    p = steps.add_parser("finetune", help="instruction-tune the base model on the dataset")
    p.add_argument("base")
    p.add_argument("output")
    p.add_argument("--dataset", default="datasets/demo.tsv")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_FINETUNE_STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=lambda a: finetune(a.base, a.output, a.dataset, a.steps, a.seed))

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
