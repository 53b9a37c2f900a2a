"""Write tests/fixtures/llama_sp/: a Llama-style SentencePiece tokenizer that ships only `tokenizer.model`, as
Vicuna v1.5 does, so the tests load the slow/SentencePiece path the real recipes take. Trained like Llama's
(BPE, byte fallback, split digits, a dummy prefix, <unk>/<s>/</s> = 0/1/2) on a few lines of prompt text.
Run once in the project's venv; the output is committed (6 KB)."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dualspeed.data.conversation import SYSTEM_PROMPT  # noqa: E402

LINES = [
    SYSTEM_PROMPT,
    "USER: What is the colour of the object at the top left? ASSISTANT: The object is red.",
    "USER: How many objects are there? ASSISTANT: There are three objects in the image.",
    "What is shown in this picture? A cat sitting on a mat next to a dog. Describe the image in detail.",
    "Is there a person in the image? Answer the question using a single word or phrase. Yes. No.",
    "Render a clear and concise summary of the photo. 12 apples, 3 pears; 2024-05-01.",
]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(LINES * 20) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=400, model_type="bpe",
            byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity", character_coverage=1.0,
            allow_whitespace_only_pieces=True, split_by_whitespace=True, max_sentencepiece_length=16,
            num_threads=1, minloglevel=2)
    (out / "tokenizer.vocab").unlink()
    # the keys of Vicuna v1.5's own tokenizer_config.json that decide tokenisation (legacy: false)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "clean_up_tokenization_spaces": False, "model_max_length": 4096, "padding_side": "right",
        "sp_model_kwargs": {}}, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "tests/fixtures/llama_sp")
